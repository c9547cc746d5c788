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
