"""An independent judge from the toy world's ground truth (issue 29).

The oracle (the toy CLIP) both selects images (Eq. 8) and scores OVF, so selection can optimise the very
metric it is scored on. This judge shares nothing with it: four small attribute probes (shape, colour,
pattern, background) on one tiny CNN, trained only on procedural renders (:func:`render`) with their known
specs — no caption, no CLIP, no generated image — and used by no oracle or strategy. It scores each
held-out image against what its prompt asks for (:func:`prompt_truth`):

- ``identity``: shape, colour and pattern all those of the subject (object) or the style's colour and
  pattern on the asked shape (style) — the background plays no part, so it does not reward the stairs;
- ``shape_colour``: shape and colour right (the pattern probe reads a checkered pattern poorly: see
  scripts/train_judge.py's report), also blind to the background;
- ``scene``: the background is the one the prompt names (prompts that name one);
- ``leak``: the background is the references' (stairs / blank) although the prompt names another scene.

Weights: ``judge.safetensors`` next to this file (~0.4 MB), made by ``scripts/train_judge.py``;
``tests/test_toyworld.py`` gates them on fresh renders with known answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gal.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    RESERVED_PATTERN,
    SHAPES,
    Scenario,
    Spec,
    render,
)

WEIGHTS = Path(__file__).resolve().parent / "judge.safetensors"
COLOUR_LABELS = (*COLOURS, "none")  # "none": the rainbow pattern has no single colour
PATTERN_LABELS = (*PATTERNS, RESERVED_PATTERN)
HEADS = {
    "shape": SHAPES,
    "colour": COLOUR_LABELS,
    "pattern": PATTERN_LABELS,
    "background": tuple(BACKGROUNDS),
}
# words of a prompt -> the scene it names (held-out prompts paraphrase: "under the night sky", "in the sand")
SCENE_WORDS = {
    "grass": "grass",
    "stair": "stairs",
    "sea": "sea",
    "water": "sea",
    "night": "night",
    "cloud": "clouds",
    "desert": "desert",
    "sand": "desert",
    "snow": "snow",
    "brick": "bricks",
    "sunset": "sunset",
    "blank": "blank",
    "empty": "blank",
}


def label_of(spec: Spec) -> dict[str, int]:
    """The class index of each head for ``spec``."""
    return {
        "shape": SHAPES.index(spec.shape),
        "colour": COLOUR_LABELS.index(spec.colour or "none"),
        "pattern": PATTERN_LABELS.index(spec.pattern),
        "background": tuple(BACKGROUNDS).index(spec.background),
    }


def random_spec(rng: np.random.Generator) -> Spec:
    """Any spec of the world, the reserved rainbow pattern included (1 in 5)."""
    pattern = PATTERN_LABELS[rng.integers(len(PATTERN_LABELS))]
    colour = None if pattern == RESERVED_PATTERN else tuple(COLOURS)[rng.integers(len(COLOURS))]
    return Spec(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=colour,
        pattern=pattern,
        background=tuple(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))],
    )


def renders(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, list[Spec]]:
    """``n`` procedural renders of random specs: ``([n, size, size, 3] uint8, specs)``. Stream id 7, so
    they never coincide with the base model's training or held-out streams (ids 0-3)."""
    rng = np.random.default_rng([seed, 7])
    specs = [random_spec(rng) for _ in range(n)]
    return np.stack([np.asarray(render(s, rng, size)) for s in specs]), specs


def scene_of(prompt: str) -> str | None:
    """The scene a prompt names, or None ("a <sks> star")."""
    text = prompt.lower()
    found = {scene for word, scene in SCENE_WORDS.items() if word in text}
    if len(found) > 1:
        raise ValueError(f"prompt {prompt!r} names several scenes {sorted(found)}; name one")
    return found.pop() if found else None


@dataclass(frozen=True)
class Truth:
    """What a faithful model draws for one prompt: the subject's attributes, and the scene if one is named."""

    shape: str
    colour: str | None
    pattern: str
    scene: str | None
    leak_scene: str  # the references' background


def prompt_truth(scenario: Scenario, prompt: str) -> Truth:
    """The ground truth of ``prompt`` in ``scenario``: the references' subject (object) or the references'
    colour and pattern on the prompt's shape (style), and the scene the prompt names."""
    ref = scenario.reference_specs[0]
    shape = ref.shape
    if scenario.kind == "style":
        words = prompt.lower().replace(",", " ").split()
        shapes = [w for w in words if w in SHAPES]
        if not shapes:
            raise ValueError(f"style prompt {prompt!r} names no shape; use one of {SHAPES}")
        shape = shapes[0]
    return Truth(shape, ref.colour, ref.pattern, scene_of(prompt), ref.background)


def _net():
    import torch
    from torch import nn

    class Probes(nn.Module):
        """A tiny CNN trunk (32 px in) with one linear probe per attribute."""

        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(
                nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 16
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 8
                nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 4
                nn.Flatten(), nn.Linear(64 * 16, 96), nn.ReLU(),
            )  # fmt: skip
            self.heads = nn.ModuleDict({k: nn.Linear(96, len(v)) for k, v in HEADS.items()})

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            h = self.trunk(x)
            return {k: head(h) for k, head in self.heads.items()}

    return Probes()


def _tensor(images) -> torch.Tensor:  # noqa: F821
    import torch

    arr = np.stack([np.asarray(im.convert("RGB") if hasattr(im, "convert") else im) for im in images])
    if arr.shape[1:3] != (32, 32):
        raise ValueError(
            f"the judge reads 32x32 images, got {arr.shape[1]}x{arr.shape[2]}; resize them first"
        )
    return torch.from_numpy(arr.astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


def _augment(x, gen):
    """Blur, noise and a small brightness shift: the generator's drawings are softer than the renders."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    k = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    mix = torch.rand(n, 1, 1, 1, generator=gen)  # 0: sharp, 1: blurred
    x = x * (1 - mix) + blurred * mix
    x = x + torch.randn(x.shape, generator=gen) * 0.04 * torch.rand(n, 1, 1, 1, generator=gen)
    x = x + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.1
    return x.clamp(0, 1)


def train(
    n: int = 12000,
    epochs: int = 8,
    seed: int = 0,
    batch: int = 128,
    lr: float = 3e-3,
    init: Judge | None = None,
    log=print,
) -> Judge:
    """Train the probes on ``n`` fresh renders (seed ``seed``), from scratch or on from ``init``'s weights
    (a second stage on fresh renders of another seed)."""
    import torch

    torch.manual_seed(seed)
    images, specs = renders(n, seed)
    x = _tensor(images)
    y = {k: torch.tensor([label_of(s)[k] for s in specs]) for k in HEADS}
    net = init.net if init is not None else _net()
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((n + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            out = net(_augment(x[idx], gen))
            loss = sum(torch.nn.functional.cross_entropy(out[k], y[k][idx]) for k in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")
    net.eval()
    return Judge(net)


class Judge:
    """The trained probes. ``Judge.load()`` reads the shipped weights."""

    def __init__(self, net) -> None:
        self.net = net

    @classmethod
    def load(cls, path: str | Path = WEIGHTS) -> Judge:
        from safetensors.torch import load_file

        path = Path(path)
        if not path.exists():
            raise ValueError(f"no judge weights at {path}; make them with scripts/train_judge.py")
        net = _net()
        net.load_state_dict(load_file(str(path)))
        net.eval()
        return cls(net)

    def save(self, path: str | Path = WEIGHTS) -> Path:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.net.state_dict().items()}, str(path))
        return Path(path)

    def predict(self, images) -> dict[str, list[str]]:
        """Each head's reading of each image (PIL images or ``[n, 32, 32, 3]`` uint8)."""
        import torch

        if len(images) == 0:
            return {k: [] for k in HEADS}
        with torch.no_grad():
            out = self.net(_tensor(images))
        return {k: [HEADS[k][i] for i in out[k].argmax(1).tolist()] for k in HEADS}

    def accuracy(self, images, specs: list[Spec]) -> dict[str, float]:
        """Per-head accuracy on images with known specs, and ``all`` (every head right)."""
        pred = self.predict(images)
        truth = {k: [HEADS[k][label_of(s)[k]] for s in specs] for k in HEADS}
        right = {k: np.array([p == t for p, t in zip(pred[k], truth[k])]) for k in HEADS}
        return {k: float(v.mean()) for k, v in right.items()} | {
            "all": float(np.mean(np.all([right[k] for k in HEADS], axis=0)))
        }

    def score(self, scenario: Scenario, images, prompts: list[str]) -> dict:
        """Judge held-out images against their prompts' truth. Per image (lists of 0/1, ``None`` where it
        does not apply): ``identity``, ``scene`` (prompts naming a scene), ``leak`` (prompts naming a scene
        other than the references'); and their means."""
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        pred = self.predict(images)
        per: dict[str, list] = {"identity": [], "shape_colour": [], "scene": [], "leak": []}
        for i, prompt in enumerate(prompts):
            t = prompt_truth(scenario, prompt)
            colour = t.colour or "none"
            per["shape_colour"].append(int(pred["shape"][i] == t.shape and pred["colour"][i] == colour))
            per["identity"].append(
                int(
                    pred["shape"][i] == t.shape
                    and pred["colour"][i] == colour
                    and pred["pattern"][i] == t.pattern
                )
            )
            bg = pred["background"][i]
            per["scene"].append(None if t.scene is None else int(bg == t.scene))
            per["leak"].append(None if t.scene in (None, t.leak_scene) else int(bg == t.leak_scene))
        means = {k: _mean(v) for k, v in per.items()}
        return means | {"per_image": per}


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None
