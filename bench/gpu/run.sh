#!/usr/bin/env bash
# The whole GPU-machine visit in one command (issues 23 and 24). On the device (carry: [".whl"]):
#     bash bench/gpu/run.sh
# installs the carried wheels into /tmp/site, checks that gal/ imports under the device's torch, runs the
# parts placement (FLUX.1-dev on an emulated 24 GB card), the session bench (SD-1.5 + SDXL, --quick) and the
# memory bench (every family x option) inside ~9 minutes with
# a budget and a hard timeout each, and writes tables + raw logs to $OUT (≤ 8 files):
#     gpu_parts.md  gpu_session.md  gpu_memory.md  env.txt  parts.log  session.log  memory.log  run.log
# Here, without a GPU, `bash bench/gpu/run.sh --smoke` runs the same steps with --cpu-smoke (tiny models,
# labelled; the test suite runs it), so the GPU path cannot crash on a typo.
set -uo pipefail
cd "$(dirname "$0")/../.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec > >(tee -a "$OUT/run.log") 2>&1
started=$(date +%s)
say() { echo "[run.sh $(( $(date +%s) - started )) s] $*"; }

# Budgets (seconds): session stops starting parts after S_BUDGET, is killed at S_HARD; memory likewise;
# the parts placement (FLUX.1-dev on an emulated 24 GB card) is killed at P_HARD.
if [ "$SMOKE" = 1 ]; then
  S_BUDGET=60 S_HARD=240 M_BUDGET=60 M_HARD=240 P_HARD=240 FLAG=--cpu-smoke FAMS="--families sd"
else
  S_BUDGET=${S_BUDGET:-150} S_HARD=${S_HARD:-200} M_BUDGET=${M_BUDGET:-120} M_HARD=${M_HARD:-160}
  P_HARD=${P_HARD:-150} FLAG="" FAMS=""
fi

# 1. carried wheels (the device has no diffusers / open_clip / sqlite-utils / torchao)
if [ "$SMOKE" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  say "installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || say "wheel install FAILED"
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# 2. the environment, and every gal/ module importing under this torch
{ command -v nvidia-smi >/dev/null && nvidia-smi; $PY bench/gpu/check_env.py; } > "$OUT/env.txt" 2>&1
say "$(tail -1 "$OUT/env.txt")"

# 3. issue 22: does a model larger than the card train and draw in parts (gal/placement.py)? Killed at P_HARD.
say "parts (hard ${P_HARD} s)"
timeout -s INT -k 15 "$P_HARD" $PY bench/gpu/parts.py $FLAG --out "$OUT/gpu_parts.md" > "$OUT/parts.log" 2>&1
say "parts exit $?"

# 4. issue 23: the session table; 5. issue 24: the memory table. SIGINT at the hard limit writes what they have.
say "gpu_session (budget ${S_BUDGET} s, hard ${S_HARD} s)"
timeout -s INT -k 15 "$S_HARD" $PY bench/gpu_session.py $FLAG --quick $FAMS --budget-s "$S_BUDGET" \
  --out "$OUT/gpu_session.md" > "$OUT/session.log" 2>&1
say "gpu_session exit $?"
say "memory (budget ${M_BUDGET} s, hard ${M_HARD} s)"
timeout -s INT -k 15 "$M_HARD" $PY bench/gpu/memory.py $FLAG $FAMS --budget-s "$M_BUDGET" \
  --out "$OUT/gpu_memory.md" > "$OUT/memory.log" 2>&1
say "memory exit $?"

for f in gpu_parts.md gpu_session.md gpu_memory.md; do
  echo; echo "===== $f"; cat "$OUT/$f" 2>/dev/null || echo "(not written: see ${f%.md}.log)"
done
say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
