"""One guard for every name that becomes a path (a preset, an upload, an export): ``safe_name``."""

import pytest

from gal.runfolder import check_name, safe_name


@pytest.mark.parametrize(
    "name, message",
    [
        (".", "starts with a dot"),
        ("..", "starts with a dot"),
        (".hidden", "starts with a dot"),
        ("../x", "starts with a dot"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("/etc", "path separator"),
        ("a\0b", "NUL or control character"),
        ("a\nb", "NUL or control character"),
        ("CON", "Windows reserves"),
        ("nul.json", "Windows reserves"),
        ("com1", "Windows reserves"),
        ("LPT9.txt", "Windows reserves"),
        ("Aux ", "ends with a dot or a space"),
        ("cats.", "ends with a dot or a space"),
        ("", "is empty"),
        ("   ", "is empty"),
        (None, "is empty"),
        ("x" * 101, "at most 100"),
    ],
)
def test_unsafe_names_are_refused_naming_the_rule(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        safe_name(tmp_path, name, "preset name")
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["my cats", "watercolor_v2", "a.b-c", "console", "com10", "nullable", "狗"])
def test_ordinary_names_pass(tmp_path, name):
    assert safe_name(tmp_path, name) == tmp_path / name
    assert check_name(name) == name


def test_a_symlink_is_not_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "mine").symlink_to(outside, target_is_directory=True)
    (presets / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("mine", "dangling"):
        with pytest.raises(ValueError, match="is a symbolic link"):
            safe_name(presets, name, "preset name")
    (presets / "plain").mkdir()
    assert safe_name(presets, "plain") == presets / "plain"
