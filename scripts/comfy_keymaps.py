"""Extract ComfyUI's own LoRA key maps for the families our local ComfyUI tree is too old to know.

The export tests check each family's ComfyUI file against ComfyUI's code (``tests/comfy_shim.py``). Where the
whole ComfyUI tree at ``GAL_COMFYUI`` predates a family (Z-Image, FLUX.2 and Krea 2 came after Oct 2025),
the tests read ``.comfy/<family>_keymap.py``: this script writes those files from any newer ComfyUI source,
verbatim, by syntax tree — the ``*_to_diffusers`` tables from ``comfy/utils.py`` (with the helpers they
call) and the family's ``if isinstance(model, …<Class>)`` branch of ``model_lora_keys_unet`` from
``comfy/lora.py``, wrapped as ``<class>_lora_keys(unet_config, key_map, sdk=())``. Nothing is rewritten
by hand, and ComfyUI's code (GPL-3.0) stays out of this repository: ``.comfy/`` is git-ignored.

    python scripts/comfy_keymaps.py /path/to/ComfyUI --source "Comfy-Org/ComfyUI@<commit>"

``SOURCE_TREE`` needs only ``comfy/utils.py`` and ``comfy/lora.py``. A family whose branch or table the
source lacks is named and skipped; the exit status is 1 when none was written.
"""

from __future__ import annotations

import argparse
import ast
import sys
import textwrap
from pathlib import Path

# our key-map module -> (ComfyUI model class of its lora.py branch, the utils tables that branch reads)
KEYMAPS = {
    "zimage_keymap": ("Lumina2", ("z_image_to_diffusers",)),
    "flux2_keymap": ("Flux", ("flux_to_diffusers",)),
    "krea2_keymap": ("Krea2", ("krea2_to_diffusers",)),
}

_HARNESS = '''
class _ModelConfig:
    def __init__(self, unet_config):
        self.unet_config = unet_config


class _Model:  # what the branch reads of ComfyUI's model: model.model_config.unet_config
    def __init__(self, unet_config):
        self.model_config = _ModelConfig(unet_config)


class utils:  # the branch calls the tables as utils.X or comfy.utils.X
{utils_attrs}


class comfy:
    utils = utils


def {fn}(unet_config, key_map, sdk=()):
    """ComfyUI's ``model_lora_keys_unet`` branch for ``{cls}`` models: LoRA key -> native weight (or
    ``(weight, (dim, start, size))`` for a slice of a fused one); ``sdk`` are the model's state-dict keys."""
    model = _Model(unet_config)
{body}
    return key_map
'''


def _functions(tree: ast.Module, source: str) -> dict[str, tuple[str, set[str]]]:
    """Top-level functions of a module: name -> (source text, names it references)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            out[node.name] = (ast.get_source_segment(source, node), names)
    return out


def _branch(lora_src: str, cls: str) -> str | None:
    """What ``model_lora_keys_unet`` does for a ``<cls>`` model: its generic loop over every weight
    (``diffusion_model.<name>`` keys load as they are) and then the body of its
    ``if isinstance(model, <anything>.<cls>):`` branch."""
    tree = ast.parse(lora_src)
    fn = next(
        (n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "model_lora_keys_unet"),
        None,
    )
    if fn is None:
        return None
    lines = lora_src.splitlines()

    def text(first, last):
        return textwrap.indent(textwrap.dedent("\n".join(lines[first.lineno - 1 : last.end_lineno])), "    ")

    generic = next(
        (n for n in fn.body if isinstance(n, ast.For) and getattr(n.iter, "id", None) == "sdk"), None
    )
    for node in fn.body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Call)):
            continue
        call = node.test
        if getattr(call.func, "id", None) != "isinstance" or len(call.args) != 2:
            continue
        kind = call.args[1]
        if isinstance(kind, ast.Attribute) and kind.attr == cls:
            return (text(generic, generic) + "\n" if generic else "") + text(node.body[0], node.body[-1])
    return None


def extract(tree_dir: Path, source: str, out: Path, only: list[str] | None = None) -> list[str]:
    utils_src = (tree_dir / "comfy" / "utils.py").read_text()
    lora_src = (tree_dir / "comfy" / "lora.py").read_text()
    funcs = _functions(ast.parse(utils_src), utils_src)
    written = []
    out.mkdir(parents=True, exist_ok=True)
    for name, (cls, tables) in KEYMAPS.items():
        if only and name not in only:
            continue
        body = _branch(lora_src, cls)
        missing = [t for t in tables if t not in funcs]
        if body is None or missing:
            what = f"no `isinstance(model, …{cls})` branch" if body is None else f"no {', '.join(missing)}"
            print(f"skipped {name}: {what} in {tree_dir}", file=sys.stderr)
            continue
        needed, todo = [], list(tables)
        while todo:  # the tables and the top-level helpers they call (e.g. swap_scale_shift)
            f = todo.pop()
            if f in needed:
                continue
            needed.append(f)
            todo += [n for n in funcs[f][1] if n in funcs and n not in needed]
        text = [
            f'"""ComfyUI\'s LoRA key map for `{cls}` models, extracted verbatim by scripts/comfy_keymaps.py',
            f"from {source} (comfy/utils.py, comfy/lora.py). ComfyUI is GPL-3.0; this file is not part of",
            'GAL Studio (the folder is git-ignored)."""',
            "",
            "import torch  # noqa: F401  (the tables' helpers use it)",
            "",
        ]
        text += [funcs[f][0] + "\n\n" for f in reversed(needed)]
        attrs = "\n".join(f"    {t} = staticmethod({t})" for t in tables) or "    pass"
        fn = f"{cls.lower()}_lora_keys"
        text.append(_HARNESS.format(utils_attrs=attrs, fn=fn, cls=cls, body=body))
        path = out / f"{name}.py"
        path.write_text("\n".join(text))
        written.append(str(path))
        print(f"wrote {path} ({fn})")
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tree", type=Path, help="a ComfyUI source folder (needs comfy/utils.py and comfy/lora.py)")
    p.add_argument("--source", required=True, help='where the tree is from, e.g. "Comfy-Org/ComfyUI@17358c8"')
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / ".comfy")
    p.add_argument("--only", nargs="*", choices=sorted(KEYMAPS), help="these key maps only")
    a = p.parse_args(argv)
    for f in ("utils.py", "lora.py"):
        if not (a.tree / "comfy" / f).exists():
            p.error(f"{a.tree / 'comfy' / f} is missing: give the folder that holds ComfyUI's comfy/ package")
    return 0 if extract(a.tree, a.source, a.out, a.only) else 1


if __name__ == "__main__":
    sys.exit(main())
