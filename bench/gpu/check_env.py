"""Before any bench on the device: every module of gal/ and storage/ imports under this Python and torch (the
device runs torch 2.11 / transformers 5.17, not our 2.14 / 5.25), the carried packages are the ones used,
and CUDA is what the benches will see. Prints one line per check; exit 1 if any import fails.

    python bench/gpu/check_env.py
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def modules(package: str) -> list[str]:
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, prefix=package + "."):
        if not info.name.endswith("__main__"):  # importing it runs the CLI
            names.append(info.name)
    return names


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args(argv)
    import torch

    failed = []
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda})")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"CUDA: {props.name}, {props.total_memory / 1e9:.0f} GB, cc {props.major}.{props.minor}")
    else:
        print("CUDA: not available to this torch")
    for name in ("diffusers", "transformers", "peft", "accelerate", "open_clip", "sqlite_utils", "torchao"):
        try:
            mod = importlib.import_module(name)
            print(f"{name} {getattr(mod, '__version__', '?')} from {Path(mod.__file__).parent}")
        except Exception as err:  # noqa: BLE001 - report every failure, not the first
            print(f"{name}: NOT IMPORTABLE ({type(err).__name__}: {err})")
            if name != "torchao":  # optional: its cells say "missing torchao"
                failed.append(name)
    for package in ("storage", "gal"):
        for name in modules(package):
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001
                failed.append(name)
                print(f"import {name}: FAILED ({type(err).__name__}: {err})")
                traceback.print_exc(limit=3)
    from gal import families

    for name, family in families.FAMILIES.items():
        try:
            family.pipeline_class()
            print(f"family {name}: {family.label}, pipeline class importable")
        except Exception as err:  # noqa: BLE001
            failed.append(f"family {name}")
            print(f"family {name}: pipeline class FAILED ({type(err).__name__}: {err})")
    print("env check: " + ("all imports OK" if not failed else f"FAILED: {', '.join(failed)}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
