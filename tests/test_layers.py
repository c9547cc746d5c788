"""Imports run one way: gal_studio (app.py) -> ui -> gal -> storage (the house rule, checked on the source).

Every import counts: module level, inside a function, and string imports through
``importlib.import_module("...")`` or ``__import__("...")``.
"""

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "storage": {
        "torch",
        "diffusers",
        "transformers",
        "gradio",
        "gal",
        "gal_studio",
        "ui",
        "app",
        "numpy",
        "open_clip",
    },
    "gal": {"gradio", "ui", "app", "gal_studio"},
    "ui": {"app", "gal_studio", "storage"},  # the UI reads through gal.engine.Studio, never the rows
}
# What ui/ may import from gal: the Studio facade and the field table (issue 21).
UI_MAY_IMPORT = {"gal.engine", "gal.fields"}


def _imports(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):  # walks function bodies too
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
    return names


def test_the_import_finder_sees_every_kind_of_import():
    source = textwrap.dedent("""
        import os
        def f():
            from gradio import Blocks
            import importlib
            return importlib.import_module("app.sub"), __import__("ui")
    """)
    assert _imports(source) >= {"os", "gradio", "importlib", "app", "ui"}


def test_layers_import_downwards_only():
    offenders = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            bad = _imports(path.read_text()) & forbidden
            if bad:
                offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
    assert offenders == []


def _gal_modules(source: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "gal"}
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").split(".")[0] == "gal"
        ):
            found.add(node.module)
    return found


def test_ui_talks_to_the_studio_only():
    """ui/ imports gal.engine (the Studio) and gal.fields, not storage, the CLI, training or the jobs'
    internals: what the page reads, the Studio offers."""
    offenders = []
    for path in sorted((ROOT / "ui").rglob("*.py")):
        source = path.read_text()
        bad = _gal_modules(source) - UI_MAY_IMPORT
        if bad:
            offenders.append(f"{path.relative_to(ROOT)} imports {', '.join(sorted(bad))}")
        if ".jobs.live" in source or "open_db" in source:
            offenders.append(f"{path.relative_to(ROOT)} reaches into the Studio's internals")
    assert offenders == []


def test_the_ui_layer_rule_catches_a_storage_import(tmp_path):
    """The rule above can fail: a ui module importing storage is reported."""
    source = "import storage\nfrom gal.review import parse_verdict\n"
    assert _imports(source) & FORBIDDEN["ui"] == {"storage"}
    assert _gal_modules(source) - UI_MAY_IMPORT == {"gal.review"}


def test_ui_does_not_import_the_cli():
    """The UI shares the engine's functions (gal.review for verdict words), not the CLI's."""
    offenders = []
    for path in sorted((ROOT / "ui").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "gal.cli":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_gal_app_console_script_works_from_any_folder(tmp_path):
    """`gal app` is a console script: it must not depend on the checkout being the working directory."""
    import os
    import subprocess
    import sys

    script = Path(sys.executable).parent / "gal"
    assert script.exists(), (
        f"the gal console script is not installed next to {sys.executable}: pip install -e ."
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    done = subprocess.run(
        [str(script), "app", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-1500:]
    assert "--runs-dir" in done.stdout and "--allowed-host" in done.stdout
    runs = subprocess.run(
        [str(script), "--runs-dir", str(tmp_path / "runs"), "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert runs.returncode == 0 and "no runs yet" in runs.stdout, runs.stderr[-1500:]


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./run.sh test" in readme and "./run.sh test" in ci
    assert "./run.sh app" in readme


def _module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (module level and inside functions), resolving
    ``from a.b import c`` to the submodule ``a.b.c`` when it is one, else to ``a.b``."""
    root = ROOT / package
    mods = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    graph[mod].add(target)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_sees_function_level_circles():
    graph = {"gal.a": {"gal.b"}, "gal.b": {"gal.a"}, "gal.c": {"gal.a"}}
    assert _circles(graph) == [["gal.a", "gal.b"]]
    assert _circles({"gal.a": {"gal.b"}, "gal.b": set()}) == []


def test_no_import_circles_inside_gal():
    """gal's modules import one way: a circle (even one hidden in a function) means a seam is wrong."""
    graph = _module_graph("gal")
    assert "gal.families.base" in graph and "gal.training" in graph
    assert _circles(graph) == []


def _family_names() -> set[str]:
    """Every registered family's name, its tiny model's name (``"tiny"`` itself is the default model, not a
    family word) and the export vocabulary's versions (``sd1``/``sd2``)."""
    from gal import families

    return set(families.FAMILIES) | (set(families.TINY) - {"tiny"}) | {"sd1", "sd2", "flux1", "sd35"}


LOAD_SITES = {"gal/models.py", "gal/loaded.py"}  # where a model is loaded or registered


def test_families_stay_behind_their_seam():
    """Outside gal/families/ no module of gal/ or ui/ names a family (string literal) and only the loading
    code asks a pipeline for its family (``family_of``); everything else reads the family the pipeline
    carries."""
    names = _family_names()
    assert {"sd", "sdxl", "flux", "sd3", "zimage", "tiny-flux2"} <= names  # the registry, not a fixed list
    offenders = []
    for path in sorted([*(ROOT / "gal").rglob("*.py"), *(ROOT / "ui").rglob("*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("gal/families/"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                offenders.append(f"{rel}:{node.lineno} names family {node.value!r}")
            if isinstance(node, ast.Name | ast.Attribute) and rel not in LOAD_SITES:
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name == "family_of":
                    offenders.append(f"{rel}:{node.lineno} calls family_of")
    assert offenders == []


def test_every_registered_family_fills_the_seam_and_has_a_tiny_model():
    import inspect

    from gal import families
    from gal.families.base import Family

    abstract = {name for name, v in vars(Family).items() if getattr(v, "__isabstractmethod__", False)}
    seam = {"per_sample_loss", "encode_with_grad", "build_tiny", "export_facts", "kohya_state_dict"}
    assert seam <= abstract
    assert set(families.TINY.values()) == set(families.FAMILIES)  # tiny-<family> derived from the registry
    for name, family in families.FAMILIES.items():
        assert isinstance(family, Family) and not inspect.isabstract(type(family)), name
        assert family.defaults.scheduler in family.schedulers(), name
