#!/bin/bash
# Issue 29's runs, in order of what decides (resumable: each command skips the runs already in
# artifacts/trial29/results.json). One process, one torch thread, nice 19, as the shared machine needs.
#   nohup scripts/trial29.sh 0 1 2 3 4 5 6 7 8 9 > artifacts/trial29.log 2>&1 &
# Rows: 2 rounds of 450 steps. Their round 1 is DreamBooth at 450 steps (same training, same held-out
# seeds), so it is the frontier's point at 450 (bench/trial/report.py) and the frontier runs the others.
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=${PY:-/work/main/.venv/bin/python}
T1="nice -n ${NICE:-19} $PY bench/table1.py --tasks known --eval-images 4 --jobs 1 --out artifacts/trial29"
ROWS="--rounds 2 --steps 450 --m 4"
FRONTIER="--frontier 100 300 600 200 --m 2"
for seed in "$@"; do
  $T1 --strategies positive-control $ROWS --seeds "$seed"
  $T1 --strategies dreambooth $FRONTIER --seeds "$seed"
  $T1 --strategies uncertainty+diversity $ROWS --seeds "$seed"
  if [ "$seed" = 0 ]; then  # the noise floor: the same frontier point with 2 torch threads
    $T1 --strategies dreambooth --frontier 300 --m 2 --threads 2 --seeds 0
  fi
done
for seed in "$@"; do
  $T1 --strategies uncertainty+balance lambda-0 $ROWS --seeds "$seed"
  $T1 --strategies dreambooth $FRONTIER --prior on --seeds "$seed"
done
