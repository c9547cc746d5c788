"""scripts/comfy_keymaps.py: a family's key map is copied out of a ComfyUI source tree by syntax tree — the
generic loop of ``model_lora_keys_unet``, the family's ``isinstance`` branch and the ``*_to_diffusers`` tables
with the helpers they call — and the written module answers as that code does. The tree here is a small
stand-in written for the test, shaped as ComfyUI's files are."""

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "comfy_keymaps.py"

UTILS = """
import torch

def swap(w):
    return torch.flip(w, [0])

def krea2_to_diffusers(mmdit_config, output_prefix=""):
    key_map = {}
    for i in range(mmdit_config.get("layers", 0)):
        to = "{}blocks.{}.attn.wq.weight".format(output_prefix, i)
        key_map["transformer_blocks.{}.attn.to_q.weight".format(i)] = to
    key_map["norm_out.linear.weight"] = ("{}last.mod.weight".format(output_prefix), None, swap)
    return key_map

def unrelated():
    return 1
"""

LORA = """
def model_lora_keys_unet(model, key_map={}):
    sd = model.state_dict()
    sdk = sd.keys()

    for k in sdk:
        if k.startswith("diffusion_model."):
            key_map["{}".format(k[:-len(".weight")])] = k

    if isinstance(model, comfy.model_base.SD3):
        key_map["never"] = "never"

    if isinstance(model, comfy.model_base.Krea2):
        config = model.model_config.unet_config
        diffusers_keys = comfy.utils.krea2_to_diffusers(config, output_prefix="diffusion_model.")
        for k in diffusers_keys:
            if k.endswith(".weight"):
                key_map["transformer.{}".format(k[:-len(".weight")])] = diffusers_keys[k]

    return key_map
"""


def _tree(tmp_path):
    (tmp_path / "src" / "comfy").mkdir(parents=True)
    (tmp_path / "src" / "comfy" / "utils.py").write_text(UTILS)
    (tmp_path / "src" / "comfy" / "lora.py").write_text(LORA)
    return tmp_path / "src"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_writes_the_branch_the_tables_and_their_helpers(tmp_path):
    out = tmp_path / "out"
    done = _run(_tree(tmp_path), "--source", "stand-in@0", "--out", out)
    assert done.returncode == 0, done.stderr
    # Z-Image's and FLUX.2's branches are not in this tree: named and skipped, Krea 2 written
    assert "skipped zimage_keymap" in done.stderr and "skipped flux2_keymap" in done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["krea2_keymap.py"]
    text = (out / "krea2_keymap.py").read_text()
    assert "stand-in@0" in text and "def swap(" in text and "unrelated" not in text and "never" not in text

    spec = importlib.util.spec_from_file_location("k", out / "krea2_keymap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    key_map = module.krea2_lora_keys({"layers": 2}, {}, sdk=["diffusion_model.blocks.0.attn.wq.weight"])
    assert key_map == {
        "diffusion_model.blocks.0.attn.wq": "diffusion_model.blocks.0.attn.wq.weight",  # the generic loop
        "transformer.transformer_blocks.0.attn.to_q": "diffusion_model.blocks.0.attn.wq.weight",
        "transformer.transformer_blocks.1.attn.to_q": "diffusion_model.blocks.1.attn.wq.weight",
        "transformer.norm_out.linear": ("diffusion_model.last.mod.weight", None, module.swap),
    }


def test_a_tree_without_comfy_files_is_refused_with_what_to_give(tmp_path):
    done = _run(tmp_path, "--source", "x")
    assert done.returncode == 2 and "comfy/utils.py is missing" in done.stderr


def test_nothing_written_exits_1(tmp_path):
    tree = _tree(tmp_path)
    (tree / "comfy" / "lora.py").write_text(LORA.replace("Krea2", "Other"))
    done = _run(tree, "--source", "x", "--out", tmp_path / "out")
    assert done.returncode == 1 and "skipped krea2_keymap" in done.stderr
