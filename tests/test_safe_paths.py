"""The one place names become paths: `paths.safe_name` and `paths.confined`."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.errors import PosttrainError
from posttrain.paths import confined, safe_name

hostile = st.text(max_size=300) | st.sampled_from(["..", ".", "../../x", "/etc/passwd", "-rf", "a/../../b", "\0", ""])


@settings(max_examples=300, deadline=None)
@given(raw=hostile)
def test_a_safe_name_is_one_harmless_path_component(raw):
    name = safe_name(raw)
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name)
    assert name not in (".", "..") and not name.startswith(("-", "."))


@settings(max_examples=100, deadline=None)
@given(raw=hostile)
def test_a_safe_name_always_stays_in_its_folder(tmp_path_factory, raw):
    base = tmp_path_factory.mktemp("out")
    assert confined(base, f"{safe_name(raw)}-F16.gguf").parent == base


def test_safe_names_keep_ordinary_names_and_tell_long_ones_apart():
    assert safe_name("exp1-checkpoint-500") == "exp1-checkpoint-500"
    assert safe_name("my model (v2)") == "my-model-v2"
    assert safe_name("../../x") == "x"
    long_a, long_b = "a" * 200 + "1", "a" * 200 + "2"
    assert safe_name(long_a) != safe_name(long_b) and len(safe_name(long_a)) == 100


@pytest.mark.parametrize("name", ["..", "../x", "a/../../x", "/etc/passwd", "", "a\0b", "."])
def test_confined_refuses_paths_that_leave_the_folder(tmp_path, name):
    with pytest.raises(PosttrainError):
        confined(tmp_path / "out", name)


def test_confined_follows_symlinks(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(tmp_path)
    with pytest.raises(PosttrainError, match="points outside"):
        confined(out, "link/secret")
    assert confined(out, "sub/x.gguf") == out / "sub" / "x.gguf"


def test_non_ascii_names_fold_accents_and_keep_their_own_identity():
    assert safe_name("café-modèle") == "cafe-modele"  # an ASCII base: nothing lost, no hash
    ja, other = safe_name("モデル"), safe_name("実験")
    assert ja.startswith("model-") and other.startswith("model-") and ja != other
    assert safe_name("exp1-モデル").startswith("exp1-") and safe_name("exp1-モデル") != "exp1"
