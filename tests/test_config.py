"""The run config's saved form: old files (flow-matching keys flat in ``train``, alpha a number) still load,
a file with both forms is refused, alpha defaults to the rank, and a run's hash does not change with the
layout (the hash and the training-state fingerprint are computed from :meth:`RunConfig.identity`)."""

import copy
import hashlib
import json

import pytest
from conftest import tiny_config

from gal.config import FlowOptions, RunConfig, TrainConfig
from gal.config.run import ADDED_LATER

# A config.json exactly as the code before ``train.flow`` saved it (commit 63303d7, `RunConfig(anchors=...,
# train=TrainConfig(rank=16, alpha=8.0, weighting_scheme="logit_normal", guidance_scale=1.0)).to_json()`).
OLD_FILE = """{"anchors": ["{} on grass", "{} in the sea"], "eval": {"enabled": true, "images_per_prompt": 2,
"prompts": []}, "gal": {"adaptive_stop": true, "images_per_anchor": 1, "k": 2, "lam": 0.005, "m": 10,
"max_rounds": 4, "pause_for_review": false, "remove_selected": true, "strategy": "uncertainty+balance"},
"generate": {"batch_size": 8, "compile": false, "cpu_offload": null, "guidance_scale": 7.5,
"negative_prompt": "", "scheduler": null, "steps": 50, "vae_slicing": null, "vae_tiling": null},
"model": "tiny", "name": "", "oracle": "tiny", "oracle_subject": null, "seed": 0, "soi_token": "<sks>",
"subject_phrase": "a <sks> cat", "task": "object", "train": {"alpha": 8.0, "batch_size": 1,
"blocks_to_swap": null, "captions": "plain", "checkpoint_every": null, "class_prompt": "",
"gradient_checkpointing": null, "guidance_scale": 1.0, "learning_rate": 0.0001, "log_dir": null,
"logit_mean": 0.0, "logit_std": 1.0, "lr_schedule": "constant", "max_grad_norm": 1.0,
"mixed_precision": "auto", "mode_scale": 1.29, "network": "lora", "num_class_images": 50,
"offload_text_encoders": null, "optimizer": null, "preview_every": null, "prior_loss_weight": 1.0,
"prior_preservation": false, "quantize_base": null, "rank": 16, "reference_sampling": "pooled",
"resolution": null, "retrain_from_base": true, "steps": 400, "target_modules": ["to_q", "to_k", "to_v",
"to_out.0"], "train_text_encoder": false, "weighting_scheme": "logit_normal"}}"""
FLOW_KEYS = ("weighting_scheme", "logit_mean", "logit_std", "mode_scale", "guidance_scale")


def _old_hash(data: dict) -> str:
    """The hash as the code before ``train.flow`` computed it: sha256 of the saved dict."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def _old_form(config: RunConfig) -> dict:
    """``config`` as the code before ``train.flow`` saved it (flow keys flat, alpha a number)."""
    data = copy.deepcopy(config.to_dict())
    data["train"].update(data["train"].pop("flow"))
    if data["train"]["alpha"] is None:
        data["train"]["alpha"] = float(data["train"]["rank"])
    for section, added in ADDED_LATER.items():  # settings the code of then did not have
        for key in added:
            del data[section][key]
    return data


def test_an_old_config_file_loads_with_its_flow_keys_nested():
    old = json.loads(OLD_FILE)
    config = RunConfig.from_dict(old)
    config.validate()
    assert config.train.flow == FlowOptions(weighting_scheme="logit_normal", guidance_scale=1.0)
    assert not set(FLOW_KEYS) & set(config.to_dict()["train"])  # saved again: the nested form
    assert config.to_dict()["train"]["flow"]["weighting_scheme"] == "logit_normal"
    assert (config.train.alpha, config.train.lora_alpha) == (8.0, 8.0)  # an old explicit alpha stays
    assert RunConfig.from_dict(json.loads(config.to_json())) == config


def test_an_old_config_keeps_its_hash_and_training_fingerprint():
    old = json.loads(OLD_FILE)
    config = RunConfig.from_dict(old)
    assert config.identity() == old
    # measured with the old code (`RunConfig.from_dict(json.loads(OLD_FILE)).config_hash()` at 63303d7); a new
    # config field changes every run's hash: re-pin this knowingly then.
    assert config.config_hash() == _old_hash(old) == "90684f57c138"
    # the mid-round training state is fingerprinted with the old to_json(): a saved state stays valid
    assert config.identity_json() == json.dumps(old, indent=2, sort_keys=True)


def test_both_the_flat_and_the_nested_flow_keys_are_refused():
    old = json.loads(OLD_FILE)
    both = {**old, "train": {**old["train"], "flow": {"weighting_scheme": "mode"}}}
    with pytest.raises(
        ValueError, match=r"flow-matching options twice: train\.weighting_scheme.*train\.flow \(the current"
    ):
        RunConfig.from_dict(both)
    one_flat = {"train": {"logit_std": 2.0, "flow": {}}}
    with pytest.raises(ValueError, match="keep one"):
        RunConfig.from_dict(one_flat)


def test_the_nested_flow_section_is_checked_like_the_others():
    assert RunConfig.from_dict({"train": {"flow": {"mode_scale": 2.0}}}).train.flow.mode_scale == 2.0
    with pytest.raises(ValueError, match=r"unknown train\.flow config keys: shift"):
        RunConfig.from_dict({"train": {"flow": {"shift": 3.0}}})
    with pytest.raises(ValueError, match=r"config field train\.flow\.logit_std must be a number"):
        RunConfig.from_dict({"train": {"flow": {"logit_std": "wide"}}})
    with pytest.raises(ValueError, match=r"'train\.flow' must be an object"):
        RunConfig.from_dict({"train": {"flow": 1.0}})
    config = tiny_config()
    config.train.flow.weighting_scheme = "cubic"
    with pytest.raises(ValueError, match=r"train\.flow\.weighting_scheme must be one of none, logit_normal"):
        config.validate()


def test_alpha_none_means_the_rank_whatever_the_rank_becomes():
    t = TrainConfig()
    assert t.alpha is None and t.lora_alpha == 8.0
    t.rank = 32
    assert t.alpha is None and t.lora_alpha == 32.0  # no attribute magic: alpha stays None
    t.alpha = 4.0
    t.rank = 2
    assert t.lora_alpha == 4.0
    assert "_alpha_follows_rank" not in vars(t) and "__setattr__" not in vars(TrainConfig)
    assert RunConfig().to_dict()["train"]["alpha"] is None  # saved as "= rank", not a copy of today's rank


def test_alpha_left_to_the_rank_hashes_as_the_old_explicit_alpha():
    """Before, alpha None was stored as float(rank); a config that leaves it to the rank keeps that hash."""
    for rank in (4, 8, 16):
        left = RunConfig(train=TrainConfig(rank=rank))
        explicit = RunConfig(train=TrainConfig(rank=rank, alpha=float(rank)))
        assert left.config_hash() == explicit.config_hash() == _old_hash(_old_form(left))
    assert RunConfig(train=TrainConfig(rank=8, alpha=4.0)).config_hash() != RunConfig().config_hash()


def test_family_defaults_leave_alpha_to_the_rank():
    from gal import families

    for name in families.FAMILIES:
        train = families.config_defaults(name)["train"]
        assert train["alpha"] is None, name
        config = RunConfig()
        for key, value in train.items():
            setattr(config.train, key, value)
        config.train.rank = 2 * train["rank"]  # the person's rank after the family's defaults
        assert config.train.lora_alpha == 2 * train["rank"], name


def test_an_old_run_in_the_database_still_opens_and_runs(shared_studio, references, tmp_path):
    """A run created before ``train.flow`` (its database row in the old form) resumes and exports with the
    hash it always had."""
    import storage

    config = tiny_config(max_rounds=1)
    run_id = shared_studio.create_run(config, references)
    old = _old_form(config)
    with shared_studio.db() as db:
        storage.update_run(db, run_id, config=old)
    run = shared_studio.advance(run_id)
    assert run["status"] == "finished"
    card = shared_studio.export(run_id, tmp_path / "out", ("card",))["card"].read_text()
    assert f"config hash `{_old_hash(old)}`" in card


def test_a_setting_added_later_hashes_as_before_at_its_default_and_apart_from_it():
    """New settings (masked loss floor, aspect buckets, image size) left at their default keep an existing
    run's hash (and so its saved mid-round state); set otherwise, they make another run."""
    base = RunConfig()
    assert base.config_hash() == _old_hash(_old_form(base))
    for section, key, value in (
        ("train", "mask_floor", 0.5),
        ("train", "bucketing", True),
        ("generate", "width", 64),
    ):
        changed = RunConfig()
        setattr(getattr(changed, section), key, value)
        assert changed.config_hash() != base.config_hash(), key
