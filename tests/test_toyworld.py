"""The toy world: deterministic, captions match specs, the GAL subject is unseen, presets well-formed,
and (when the shipped weights are present) the pipeline and the CLIP load offline and run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from gal.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    PATTERNS,
    RESERVED_PATTERN,
    SHAPES,
    CaptionDrop,
    Spec,
    caption,
    heldout_set,
    iter_batches,
    render,
    sample_spec,
    scenarios,
)

ASSETS = Path(__file__).resolve().parents[1] / "gal" / "assets" / "toyworld"


def test_render_is_deterministic_per_seed():
    spec = Spec("star", "red", "striped", "grass")
    a = np.asarray(render(spec, np.random.default_rng(3)))
    b = np.asarray(render(spec, np.random.default_rng(3)))
    c = np.asarray(render(spec, np.random.default_rng(4)))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_batches_and_heldout_are_deterministic_and_distinct():
    b1, b2 = next(iter_batches(7, 8)), next(iter_batches(7, 8))
    assert np.array_equal(b1.images, b2.images) and b1.captions == b2.captions
    h1, h2 = heldout_set(7, 8), heldout_set(7, 8)
    assert np.array_equal(h1.images, h2.images)
    assert not np.array_equal(h1.images, b1.images)  # held-out stream is not the training stream
    assert h1.captions == [caption(s) for s in h1.specs]


def test_full_caption_names_every_attribute():
    assert caption(Spec("star", "red", "striped", "grass")) == "a red striped star on grass"
    assert caption(Spec("heart", "orange", "plain", "sea")) == "an orange plain heart in the sea"
    assert caption(Spec("star", None, RESERVED_PATTERN, "stairs")) == "a rainbow-striped star on stairs"
    rng = np.random.default_rng(0)
    for _ in range(200):
        s = sample_spec(rng)
        c = caption(s)
        assert s.colour in c.split() and s.pattern in c.split() and s.shape in c.split()
        assert c.endswith(BACKGROUNDS[s.background][0])


def test_dropped_captions_never_lie_and_bare_prompts_occur():
    rng = np.random.default_rng(1)
    bare = 0
    for _ in range(500):
        s = sample_spec(rng)
        c = caption(s, rng)
        words = set(c.split())
        assert words & {s.shape, "shape"}  # always a noun
        assert not words & (set(COLOURS) - {s.colour})  # never a wrong colour ...
        assert not words & (set(SHAPES) - {s.shape})  # ... shape ...
        assert not words & (set(PATTERNS) - {s.pattern})  # ... or pattern
        other_bgs = [p for b, ps in BACKGROUNDS.items() if b != s.background for p in ps]
        assert not any(c.endswith(p) for p in other_bgs)
        bare += c == f"a {s.shape}"
    assert bare > 0  # "a star" is a training caption
    assert (
        caption(Spec("star", "red", "plain", "sea"), rng, CaptionDrop(0, 0, 0, 0, 0))
        == "a red plain star in the sea"
    )


def test_rainbow_pattern_never_in_base_sampling():
    rng = np.random.default_rng(2)
    assert all(sample_spec(rng).pattern != RESERVED_PATTERN for _ in range(5000))
    batch = next(iter_batches(0, 64))
    assert not any("rainbow" in c for c in batch.captions)


def test_invalid_spec_names_the_value():
    with pytest.raises(ValueError, match="'hexagram'"):
        Spec("hexagram", "red", "plain", "grass")
    with pytest.raises(ValueError, match="colour=None"):
        Spec("star", "red", RESERVED_PATTERN, "grass")


def test_scenarios_are_well_formed(tmp_path):
    sc = scenarios()
    assert set(sc) == {"object", "style", "known", "known-style"}
    for s in sc.values():
        assert len(s.anchors) == 18 and len(set(s.anchors)) == 18
        assert all(a.count("{}") == 1 for a in s.anchors)
        assert 1 <= len(s.reference_specs) <= 5
        assert len({r.background for r in s.reference_specs}) == 1  # one non-SoI background
        # object/style: a pattern the base model never saw; known, known-style: one it draws
        known = s.name in ("known", "known-style")
        assert all((r.pattern == RESERVED_PATTERN) == (not known) for r in s.reference_specs)
        assert all(s.token in p for p in s.anchor_prompts())
        assert all(s.token not in t and "  " not in t for t in s.anchor_oracle_texts())
        assert s.token in s.prompt and s.token not in s.non_soi_text
        assert not set(s.eval_prompts) & set(s.anchor_prompts())
        paths = s.write_references(tmp_path / s.name)
        assert len(paths) == len(s.reference_specs) and all(p.exists() for p in paths)
    obj = sc["object"]
    assert obj.prompt == "a <sks> star on stairs" and obj.non_soi_text == "a star on stairs"
    assert not any("stairs" in a for a in obj.anchors)
    assert "{} on grass" in obj.anchors and "{} in the sea" in obj.anchors
    # every anchor phrase is a phrase the base model saw in training captions
    phrases = {p for ps in BACKGROUNDS.values() for p in ps}
    assert all(re.sub(r"^\{\} ", "", a) in phrases for a in obj.anchors)


@pytest.mark.skipif(not (ASSETS / "pipeline" / "model_index.json").exists(), reason="no shipped pipeline")
def test_shipped_pipeline_loads_offline_and_draws(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(ASSETS / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    # the tokenizer is the full CLIP BPE (a broken folder silently gives a 2-token vocab)
    assert len(pipe.tokenizer) == 49408
    assert pipe.tokenizer("a red star").input_ids == [49406, 320, 736, 1565, 49407]
    out = pipe(
        ["a red star on grass", "a blue circle in the night sky"],
        num_inference_steps=2,
        generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)],
        output_type="np",
    )
    assert out.images.shape == (2, 32, 32, 3)
    assert np.isfinite(out.images).all()
    assert np.abs(out.images[0] - out.images[1]).mean() > 1e-3  # the prompt matters


@pytest.mark.skipif(not (ASSETS / "clip" / "open_clip_config.json").exists(), reason="no shipped clip")
def test_shipped_clip_loads_and_embeds():
    import open_clip
    import torch

    from gal.toyworld.clip import load_toy_clip

    model, preprocess, tokenizer = load_toy_clip(ASSETS / "clip")
    img = preprocess(render(Spec("star", "red", "plain", "grass"), np.random.default_rng(0))).unsqueeze(0)
    with torch.no_grad():
        f = model.encode_image(img)
        t = model.encode_text(tokenizer(["a red star", "a blue circle"]))
    assert f.shape[-1] == t.shape[-1] and torch.isfinite(f).all()
    # the standard open_clip path works too
    m2 = open_clip.create_model(f"local-dir:{ASSETS / 'clip'}")
    assert sum(p.numel() for p in m2.parameters()) == sum(p.numel() for p in model.parameters())
    assert os.path.getsize(ASSETS / "clip" / "open_clip_model.safetensors") < 20e6


def test_known_scenario_is_the_object_scenario_with_a_subject_the_base_model_draws(tmp_path):
    from gal.toyworld.world import KNOWN_SUBJECT, subject_renders, truth_specs

    obj, known = scenarios()["object"], scenarios()["known"]
    assert known.kind == "object" and known.anchors == obj.anchors and known.eval_prompts == obj.eval_prompts
    assert (known.prompt, known.non_soi_text) == (obj.prompt, obj.non_soi_text)
    assert set(known.reference_specs) == {KNOWN_SUBJECT} and KNOWN_SUBJECT.pattern in PATTERNS
    assert KNOWN_SUBJECT.background == "stairs"
    truth = truth_specs(known)  # the subject in each of the 9 anchor scenes
    assert [s.background for s in truth] == [b for b in BACKGROUNDS if b != "stairs"]
    assert {(s.shape, s.colour, s.pattern) for s in truth} == {("star", "green", "checkered")}
    renders = subject_renders(truth[:2], 3)
    assert len(renders) == 6 and renders[0].size == (32, 32)
    again = subject_renders(truth[:2], 3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(renders, again))


def test_known_style_is_the_style_scenario_with_a_palette_the_base_model_draws():
    from gal.toyworld.world import KNOWN_STYLE, STYLE_ANCHOR_SHAPES, STYLE_BACKGROUNDS, truth_specs

    sty, known = scenarios()["style"], scenarios()["known-style"]
    assert known.kind == "style" and known.anchors == sty.anchors and known.eval_prompts == sty.eval_prompts
    assert (known.prompt, known.non_soi_text) == (sty.prompt, sty.non_soi_text)
    assert set(known.reference_specs) == {KNOWN_STYLE} and len(known.reference_specs) == 2
    assert (KNOWN_STYLE.shape, KNOWN_STYLE.background) == ("heart", "blank")
    assert KNOWN_STYLE.pattern in PATTERNS
    # the gate's truth: the palette on each anchor's shape in its scene, in the anchors' order
    truth = truth_specs(known)
    assert [f"a {s.shape} {{}} {BACKGROUNDS[s.background][0]}" for s in truth] == known.anchors
    assert {(s.colour, s.pattern) for s in truth} == {("green", "checkered")}
    assert len(set(STYLE_ANCHOR_SHAPES)) * len(STYLE_BACKGROUNDS) == len(truth) == 18


def test_demo_known_is_an_object_run(tmp_path):
    from gal.demo import demo_scenario

    config, refs = demo_scenario(tmp_path, "known", model="tiny")
    config.validate()
    assert config.task == "object" and len(refs) == 4 and refs[0].non_soi_text == "a star on stairs"
    config, refs = demo_scenario(tmp_path, "known-style", model="tiny")
    config.validate()
    assert config.task == "style" and len(refs) == 2
    assert refs[0].non_soi_text == "a heart on a blank background"


# --- issue 29: the independent judge (attribute probes trained on procedural renders only) -------------
JUDGE_WEIGHTS = Path(__file__).resolve().parents[1] / "gal" / "toyworld" / "judge.safetensors"


def test_prompt_truth_reads_the_subject_and_the_scene():
    from gal.toyworld.judge import prompt_truth, scene_of

    sc = scenarios()
    assert [scene_of(p) for p in sc["known"].eval_prompts] == [
        None,
        "grass",
        "night",
        "sea",
        "snow",
        "desert",
    ]
    assert (
        scene_of("a <sks> star on the water") == "sea" and scene_of("a <sks> star against bricks") == "bricks"
    )
    t = prompt_truth(sc["known"], "a <sks> star in a field of grass")
    assert (t.shape, t.colour, t.pattern, t.scene, t.leak_scene) == (
        "star",
        "green",
        "checkered",
        "grass",
        "stairs",
    )
    t = prompt_truth(sc["known-style"], "a square in <sks> style in the desert")
    assert (t.shape, t.colour, t.pattern, t.scene, t.leak_scene) == (
        "square",
        "green",
        "checkered",
        "desert",
        "blank",
    )
    assert prompt_truth(sc["object"], "a <sks> star").colour is None  # the rainbow has no single colour
    with pytest.raises(ValueError, match="several scenes"):
        scene_of("a star on grass in the snow")
    with pytest.raises(ValueError, match="names no shape"):
        prompt_truth(sc["known-style"], "something in <sks> style")


@pytest.mark.skipif(not JUDGE_WEIGHTS.exists(), reason="no judge weights: scripts/train_judge.py")
def test_judge_gate_on_fresh_renders():
    """The shipped probes read fresh renders (a seed they never saw) with known answers. The gate is what
    the shipped weights reach (scripts/train_judge.py: shape 0.86, colour 1.00, pattern 0.84-0.87,
    background 1.00 on 2,000 fresh renders), a little below, so a broken retrain fails it."""
    from gal.toyworld.judge import Judge, renders

    assert JUDGE_WEIGHTS.stat().st_size < 2_000_000
    judge = Judge.load()
    images, specs = renders(300, seed=12345)
    acc = judge.accuracy(images, specs)
    assert acc["shape"] >= 0.8 and acc["colour"] >= 0.97 and acc["pattern"] >= 0.8, acc
    assert acc["background"] >= 0.98 and acc["all"] >= 0.65, acc


@pytest.mark.skipif(not JUDGE_WEIGHTS.exists(), reason="no judge weights: scripts/train_judge.py")
def test_judge_scores_identity_scene_and_leak_with_known_answers():
    from gal.toyworld.judge import Judge
    from gal.toyworld.world import RESERVED_PATTERN, subject_renders

    sc = scenarios()["object"]  # the rainbow star: the probes read it (0.94 in its scenes)
    judge = Judge.load()
    right = subject_renders([Spec("star", None, RESERVED_PATTERN, "grass")], 8, seed=77)
    on_stairs = subject_renders([Spec("star", None, RESERVED_PATTERN, "stairs")], 8, seed=78)
    wrong = subject_renders([Spec("circle", "red", "plain", "grass")], 8, seed=79)
    prompt = ["a <sks> star in a field of grass"] * 8
    good = judge.score(sc, right, prompt)
    assert good["identity"] >= 0.75 and good["scene"] >= 0.95 and good["leak"] <= 0.05
    leaked = judge.score(sc, on_stairs, prompt)
    assert leaked["identity"] >= 0.75 and leaked["leak"] >= 0.95 and leaked["scene"] <= 0.05
    assert judge.score(sc, wrong, prompt)["identity"] == 0.0
    assert judge.score(sc, wrong, prompt)["shape_colour"] <= 0.15
    bare = judge.score(sc, on_stairs, ["a <sks> star"] * 8)  # no scene asked: no scene or leak verdict
    assert bare["scene"] is None and bare["leak"] is None and bare["per_image"]["leak"] == [None] * 8
    # the known subject: shape and colour read, the checkered pattern much less (its identity is weak)
    known = judge.score(
        scenarios()["known"],
        subject_renders([Spec("star", "green", "checkered", "grass")], 8, seed=77),
        prompt,
    )
    assert known["shape_colour"] >= 0.6 and known["leak"] == 0.0
    with pytest.raises(ValueError, match="one prompt per image"):
        judge.score(sc, right, prompt[:3])
