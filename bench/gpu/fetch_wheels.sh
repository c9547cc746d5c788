#!/usr/bin/env bash
# Fetch, HERE (PyPI reachable), the wheels the GPU machine lacks into the git-ignored .whl/ that the device
# `run` call carries (carry: [".whl"]). The device's Python 3.12 already has torch 2.11, transformers, peft,
# accelerate, safetensors, huggingface-hub, timm, click, tabulate, pluggy, python-dateutil, regex, tqdm,
# requests, zipp, filelock (KINDS.md's package list); these are what it lacks, one version each:
#   diffusers (+ importlib-metadata), open_clip_torch (+ ftfy, wcwidth), sqlite-utils (+ click-default-group,
#   sqlite-fts4), torchao (the int8 base; optional: WITHOUT_TORCHAO=1 leaves it out).
# bitsandbytes' CUDA wheel is too large to carry (the 64 MiB limit): adamw8bit / nf4 cells say "missing".
# Then it checks the set: every Requires-Dist is either carried or on the device's list, the total with the
# tracked tree fits 64 MiB, and (VERIFY=1, default) it installs into a temp --target and imports them here.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
PIP=${PIP:-"$PY -m pip"}
WHEELS=(
  diffusers==0.42.1 importlib-metadata==8.7.0
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.2.13
  sqlite-utils==4.2.1 click-default-group==1.2.4 sqlite-fts4==1.0.3
)
[ "${WITHOUT_TORCHAO:-0}" = 1 ] || WHEELS+=(torchao==0.18.0)
rm -rf .whl && mkdir -p .whl
grep -qx '/.whl/' .gitignore 2>/dev/null || grep -qx '/.whl/' .git/info/exclude 2>/dev/null \
  || echo '/.whl/' >> .git/info/exclude
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -l .whl
# The device's copy has no .git: the commit travels with the wheels (rerun after committing; the table's
# tree digest, bench.gpu.common.tree_digest(), says exactly which code ran).
git rev-parse --short HEAD > .whl/COMMIT
git diff --quiet HEAD -- gal storage bench || sed -i 's/$/+dirty/' .whl/COMMIT
# Dependencies: each must be carried or already on the device (the names KINDS.md lists).
ON_DEVICE="torch torchvision transformers peft accelerate safetensors huggingface-hub numpy pillow regex requests
 filelock tqdm timm click tabulate pluggy python-dateutil zipp httpx packaging pyyaml typing-extensions
 sentencepiece protobuf fsspec jinja2 setuptools pip"
$PY - "$ON_DEVICE" <<'PYEOF'
import re, sys, zipfile, glob
on_device = set(sys.argv[1].split())
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
carried = {norm(re.match(r"([^-]+)", w.split("/")[-1]).group(1)) for w in glob.glob(".whl/*.whl")}
missing = []
for w in sorted(glob.glob(".whl/*.whl")):
    with zipfile.ZipFile(w) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:") and "extra ==" not in line:
                dep = norm(re.match(r"Requires-Dist:\s*([A-Za-z0-9_.\-]+)", line).group(1))
                if "python_version < " in line:  # backports for older Pythons than the device's 3.12
                    continue
                if dep not in carried and dep not in {norm(d) for d in on_device}:
                    missing.append(f"{w.split('/')[-1]} needs {dep}")
print("dependencies: all carried or on the device" if not missing else "NOT RESOLVED:\n  " + "\n  ".join(missing))
sys.exit(1 if missing else 0)
PYEOF
wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s}')
untracked=$(git ls-files -z --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | awk '/total$/ {s += $1} END {print s+0}')
total=$((wheels + tracked + untracked))
printf 'wheels %.1f MiB + tracked tree %.1f MiB + untracked %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$wheels/1048576" | bc -l)" "$(echo "$tracked/1048576" | bc -l)" "$(echo "$untracked/1048576" | bc -l)" \
  "$(echo "$total/1048576" | bc -l)"
[ "$total" -lt $((64 * 1048576)) ] || { echo "OVER the 64 MiB limit: carry fewer wheels (WITHOUT_TORCHAO=1)"; exit 1; }
if [ "${VERIFY:-1}" = 1 ]; then  # install as the device does, and import them here (this Python, not 3.12)
  site=$(mktemp -d)
  VPY=${VERIFY_PYTHON:-$PY}  # a Python with torch + transformers (the device's stand-in here)
  $VPY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  PYTHONPATH="$site" $VPY -c "
import diffusers, open_clip, sqlite_utils, ftfy
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline, FluxPipeline
import os
assert diffusers.__file__.startswith(os.environ['PYTHONPATH']), diffusers.__file__
print('imports from the carried set:', 'diffusers', diffusers.__version__, '| open_clip', open_clip.__version__,
      '| sqlite_utils ok', '| ftfy', ftfy.__version__)
try:
    import torchao; print('torchao', torchao.__version__)
except ImportError as err:
    print('torchao not importable here:', err)
"
  rm -rf "$site"
fi
