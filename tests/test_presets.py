"""Presets (gal.presets) and the one guard every typed name passes (gal.runfolder.safe_name), issue 25.1:
no preset name reads, writes or deletes outside ``<runs>/presets``."""

from __future__ import annotations

import json
import os

import pytest
from PIL import Image

from gal.presets import Presets
from gal.runfolder import safe_name

BAD_NAMES = [".", "..", "../x", "a/b", "a\\b", "a\x00b", "CON", "nul", "Com1.json", "LPT9", "x.", "x ", ""]


def tree(root) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "src" / "cat.png"
    path.parent.mkdir()
    Image.new("RGB", (8, 8), "red").save(path)
    return str(path)


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_one_plain_file_name_is_refused(tmp_path, name):
    with pytest.raises(ValueError):
        safe_name(tmp_path, name)


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n != "x "])  # a typed name is stripped first
def test_saving_a_preset_under_a_bad_name_writes_nothing_anywhere(tmp_path, image, name):
    runs = tmp_path / "runs"
    (runs / "images").mkdir(parents=True)  # what '..' used to replace: <runs>/images
    (runs / "images" / "keep.txt").write_text("mine")
    before = tree(tmp_path)
    with pytest.raises(ValueError):
        Presets(runs / "presets").save(name, {"seed": 1}, [image], [["cat.png", "a <sks> cat", ""]])
    assert tree(tmp_path) == before and (runs / "images" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="no preset|choose a preset"):
        Presets(runs / "presets").load(name)


def test_a_preset_round_trips_with_its_images(tmp_path, image):
    store = Presets(tmp_path / "presets")
    assert store.save("my cat", {"seed": 7}, [image], [["cat.png", "a <sks> cat", "a cat"]]) == 1
    assert store.save("my cat", {"seed": 8}, [image], [["cat.png", "a <sks> cat", "a cat"]]) == 1  # again
    loaded = store.load("my cat")
    assert loaded["form"] == {"seed": 8} and loaded["table"] == [["cat.png", "a <sks> cat", "a cat"]]
    assert [os.path.basename(p) for p in loaded["images"]] == ["cat.png"] and store.names() == ["my cat"]
    assert all(str(tmp_path / "presets" / "my cat") in p for p in loaded["images"])


def test_symlinks_are_not_followed(tmp_path, image):
    folder = tmp_path / "presets"
    folder.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text(json.dumps({"form": {"seed": 1}}))
    (folder / "evil.json").symlink_to(outside / "secret.json")
    (folder / "evil").symlink_to(outside)
    store = Presets(folder)
    with pytest.raises(ValueError):
        store.load("evil")
    with pytest.raises(ValueError):
        store.save("evil", {}, [image], [])
    assert (outside / "secret.json").read_text() == json.dumps({"form": {"seed": 1}})
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]  # nothing written through the link
    assert store.names() == []  # a link is not listed as a preset


def test_a_folder_that_is_not_a_presets_is_never_replaced(tmp_path, image):
    folder = tmp_path / "presets"
    (folder / "notes" / "images").mkdir(parents=True)
    (folder / "notes" / "diary.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a preset's"):
        Presets(folder).save("notes", {}, [image], [])
    assert (folder / "notes" / "diary.txt").read_text() == "mine" and (folder / "notes" / "images").is_dir()


def test_a_broken_preset_file_is_a_message_not_a_traceback(tmp_path):
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "bad.json").write_text("[" * 100_000)
    (folder / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not valid JSON"):
        Presets(folder).load("bad")
    with pytest.raises(ValueError, match="must hold a JSON object"):
        Presets(folder).load("list")
