"""What saving the mid-round training state costs (gal.trainstate): one save (LoRA weights, AdamW state,
scheduler, generator; temp file, fsync, rename) of the size of an SD-1.5 rank-8 and a FLUX.1 rank-16 LoRA.
Divide by ``train.checkpoint_every`` x a step's time to get the share of training time it costs."""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import torch

    from gal.trainstate import TrainState

    print("| LoRA | state file | median save |\n|---|---|---|")
    for label, n in [("SD-1.5 r8 (~1.6M params)", 1_600_000), ("FLUX.1 r16 (~18M params)", 18_000_000)]:
        params = [torch.nn.Parameter(torch.randn(n // 100)) for _ in range(100)]
        optimizer = torch.optim.AdamW(params)
        for p in params:
            p.grad = torch.randn_like(p)
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
        generator = torch.Generator().manual_seed(0)
        with tempfile.TemporaryDirectory() as folder:
            state = TrainState(Path(folder) / "train_state.pt", {"bench": 1}, 100)
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                state.save(100, params, optimizer, scheduler, generator, [0.1] * 100)
                times.append(time.perf_counter() - started)
            size = state.path.stat().st_size / 1e6
        print(f"| {label} | {size:.0f} MB | {sorted(times)[len(times) // 2] * 1000:.0f} ms |")


if __name__ == "__main__":
    main()
