"""Vault path validation: one canonical spelling per location, clear refusals."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from pcloud.errors import BadPath, UsageError
from pcloud.store import paths
from pcloud.store.paths import normalize


@pytest.mark.parametrize("raw,canon", [
    ("", ""),
    ("a", "a"),
    ("a/b/c", "a/b/c"),
    ("docs/", "docs"),
    ("with space/ x ", "with space/ x "),
    ("caf\u0065\u0301", "caf\u00e9"),  # NFD -> NFC
    ("a/\u00e9", "a/\u00e9"),
    ("x" * 255, "x" * 255),
    ("new\nline", "new\nline"),  # legal on POSIX, kept so imports lose nothing
    ("...", "..."),
    (".hidden/.x", ".hidden/.x"),
])
def test_accepted(raw, canon):
    assert normalize(raw) == canon
    assert normalize(canon) == canon


@pytest.mark.parametrize("raw,why", [
    ("/etc/passwd", "absolute"),
    ("/", "absolute"),
    ("a/../b", "'..'"),
    ("..", "'..'"),
    ("../x", "'..'"),
    ("./a", "'.'"),
    ("a/./b", "'.'"),
    (".", "'.'"),
    ("a//b", "empty"),
    ("a/b//", "empty"),
    ("a\x00b", "NUL"),
    ("a\\b", "backslash"),
    ("C:\\x", "backslash"),
    ("x" * 256, "256 bytes"),
    ("\u00e9" * 128, "256 bytes"),  # 128 chars but 256 UTF-8 bytes
    ("bad\udcff", "surrogate"),
    ("a/" * 300 + "a", "deep"),
    ("ab/" * 1500, "longer than 4096"),
])
def test_refused_with_reason(raw, why):
    with pytest.raises(BadPath) as info:
        normalize(raw)
    assert why in str(info.value)
    assert isinstance(info.value, UsageError)


def test_non_str_refused():
    with pytest.raises(BadPath):
        normalize(b"a/b")  # type: ignore[arg-type]
    with pytest.raises(BadPath):
        paths.check_name(3)  # type: ignore[arg-type]


def test_helpers():
    assert paths.split("") == []
    assert paths.split("a/b") == ["a", "b"]
    assert paths.join("", "a", "", "b/c") == "a/b/c"
    assert paths.parent("a/b/c") == "a/b"
    assert paths.parent("a") == ""
    assert paths.basename("a/b") == "b"
    assert paths.is_within("a/b", "a") and paths.is_within("a", "a") and paths.is_within("x", "")
    assert not paths.is_within("ab", "a")


names = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"), min_size=1, max_size=20
).filter(lambda n: n not in (".", ".."))


@given(st.lists(names, min_size=1, max_size=8))
def test_valid_paths_normalise_idempotently(parts):
    raw = "/".join(parts)
    canon = normalize(raw)
    assert normalize(canon) == canon
    assert len(paths.split(canon)) == len(parts)
    assert not canon.startswith("/") and "//" not in canon


@given(st.text(max_size=60))
def test_arbitrary_text_is_canonical_or_refused(raw):
    try:
        canon = normalize(raw)
    except BadPath:
        return
    assert normalize(canon) == canon
    parts = paths.split(canon)
    assert all(p not in ("", ".", "..") and "\\" not in p and "\x00" not in p for p in parts)
    assert all(len(p.encode()) <= 255 for p in parts)


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b"]), min_size=1, max_size=6))
def test_no_escape(parts):
    raw = "/".join(parts)
    try:
        canon = normalize(raw)
    except BadPath:
        return
    assert ".." not in paths.split(canon)
