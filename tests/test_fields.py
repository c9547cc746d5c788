"""The field table (gal.fields): one row per setting builds the Set up widget, the form's parsing both ways,
the label messages use, and the ``gal run`` flag. Adding a setting is one row (issue 21)."""

from __future__ import annotations

import json
import os
import re

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gal import fields  # noqa: E402
from gal.cli import _new_config, build_parser  # noqa: E402
from gal.config import RunConfig  # noqa: E402
from gal.fields import PARSERS, Field, config_from_form, default_form, form_from_config  # noqa: E402

WIDGETS = {"text", "lines", "number", "radio", "checkbox"}
# A setting that is not on the page today: the generator's negative prompt.
NEW_ROW = Field(
    "negative_prompt",
    "Negative prompt",
    "what the images should not show",
    "text",
    "generate.negative_prompt",
    "text",
    "more2",
    flag="--negative-prompt",
)


def test_every_row_is_complete_and_reaches_a_config_field():
    names = [f.name for f in fields.FIELDS]
    assert len(names) == len(set(names))
    flags = [f.flag for f in fields.FIELDS if f.flag]
    assert len(flags) == len(set(flags))
    config = RunConfig()
    for f in fields.FIELDS:
        assert f.widget in WIDGETS and f.parse in PARSERS and f.label and f.help, f
        assert (f.widget == "radio") == bool(f.choices), f
        fields._get(config, f.path)  # the path exists (AttributeError otherwise)
    assert fields.label_of("m") == "m (images drawn per anchor)" and fields.label_of("nope") == "nope"


def test_the_form_round_trips_through_the_config():
    form = default_form("tiny", "tiny")
    config = config_from_form(form)
    assert form_from_config(config) == form
    assert config.gal.pause_for_review is True  # the app always stops at review


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("m", "abc", "m (images drawn per anchor) must be a number, got 'abc'"),
        ("m", [1], "m (images drawn per anchor) must be a number, got [1]"),
        ("m", True, "m (images drawn per anchor) must be a number, got True"),
        ("lam", None, "λ is empty"),
        ("k", float("nan"), "k (anchors per round) must be a whole number, got nan"),
        ("anchors", ["a {}"], "anchors must be text, got list"),
        ("adaptive_stop", "yes", "Adaptive stop (Eq. 10) must be true or false, got 'yes'"),
        ("lr_schedule", "fast", "learning-rate schedule must be one of constant, cosine, got 'fast'"),
        ("model", " ", "the model is empty"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_the_field(name, value, message):
    """Issue 25.6: every value a script sends is checked by its row's parser, which names the field."""
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_form({**default_form("tiny", "tiny"), name: value})


def test_adding_one_row_adds_the_widget_the_config_the_form_and_the_cli_flag(monkeypatch, tmp_path):
    monkeypatch.setattr(fields, "FIELDS", (*fields.FIELDS, NEW_ROW))
    # the form and the config, both ways
    form = {**default_form("tiny", "tiny"), "negative_prompt": "  blurry  "}
    config = config_from_form(form)
    assert config.generate.negative_prompt == "blurry"
    assert form_from_config(config)["negative_prompt"] == "blurry"
    assert "negative_prompt" in fields.field_names()
    # the CLI: `gal run --negative-prompt ...` sets the same config field
    (tmp_path / "c.json").write_text(json.dumps({}))
    args = build_parser().parse_args(
        ["run", "--config", str(tmp_path / "c.json"), "--negative-prompt", "text, watermark"]
    )
    assert _new_config(args)[0].generate.negative_prompt == "text, watermark"
    assert "--negative-prompt" in build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    # the page: the Set up tab shows it, under its label, with a stable handle, and Start reads it
    from gal.engine import Studio
    from ui import build

    demo = build(Studio(tmp_path / "runs", model="tiny", oracle="tiny"))
    widget = demo.gal_components["negative_prompt"]
    assert widget.label == "Negative prompt" and widget.elem_id == "gal-f-negative-prompt"
    handlers = demo.gal_handlers
    values = [form[n] for n in fields.field_names()]
    assert "✓" in handlers.validate_form(*values)


def test_a_row_in_a_group_the_page_does_not_place_is_an_error(monkeypatch, tmp_path):
    """A row must say where it sits: an unknown group fails at build, not silently off the page."""
    from gal.engine import Studio
    from ui import build

    lost = Field(
        "negative_prompt", "Negative prompt", "h", "text", "generate.negative_prompt", "text", "nowhere"
    )
    monkeypatch.setattr(fields, "FIELDS", (*fields.FIELDS, lost))
    with pytest.raises(ValueError, match="have no place on the page"):
        build(Studio(tmp_path / "runs", model="tiny", oracle="tiny"))


def test_the_cli_flags_are_the_rows_flags():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    options = {o for a in run._actions for o in a.option_strings}
    assert {f.flag for f in fields.FIELDS if f.flag} <= options
    args = build_parser().parse_args(["run", "--m", "3", "--lam", "0.01", "--sampling", "real-rate"])
    assert (args.m, args.lam, args.sampling) == (3, 0.01, "real-rate")
    config = RunConfig()
    fields.apply_flags(config, args)
    assert (config.gal.m, config.gal.lam, config.train.reference_sampling) == (3, 0.01, "real-rate")


def test_the_training_state_interval_is_a_row_widget_form_and_flag(tmp_path):
    """Issue 26.4: train.checkpoint_every on the page and on `gal run` (empty: the automatic interval)."""
    form = default_form("tiny", "tiny")
    assert form["checkpoint_every"] is None and config_from_form(form).train.checkpoint_every is None
    assert config_from_form({**form, "checkpoint_every": ""}).train.checkpoint_every is None
    assert config_from_form({**form, "checkpoint_every": 25}).train.checkpoint_every == 25
    assert config_from_form({**form, "checkpoint_every": "0"}).train.checkpoint_every == 0
    with pytest.raises(ValueError, match="training-state interval must be 0"):
        config_from_form({**form, "checkpoint_every": -3})
    with pytest.raises(ValueError, match="training-state interval must be a whole number"):
        config_from_form({**form, "checkpoint_every": 2.5})
    args = build_parser().parse_args(["run", "--checkpoint-every", "7"])
    config = RunConfig()
    fields.apply_flags(config, args)
    assert config.train.checkpoint_every == 7
    from gal.engine import Studio
    from ui import build

    demo = build(Studio(tmp_path / "runs", model="tiny", oracle="tiny"))
    widget = demo.gal_components["checkpoint_every"]
    assert widget.elem_id == "gal-f-checkpoint-every" and widget.value is None
