"""Sealed envelope framing: exact round trips, strict bounded decoding, fuzzed."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from replication import envelope as env
from replication.errors import MalformedEnvelope

ids = st.binary(min_size=32, max_size=32)
envelopes = st.builds(
    env.Envelope,
    kind=st.integers(1, 255),
    object_id=ids,
    epoch=st.integers(0, 2**32 - 1),
    refs=st.lists(ids, max_size=8).map(tuple),
    body=st.binary(min_size=16, max_size=300),
)


@given(envelopes)
def test_round_trip_and_header_is_prefix(e):
    data = e.encode()
    assert env.decode(data) == e
    assert data.startswith(e.header_bytes)
    h = env.decode_header(data)
    assert (h.kind, h.object_id, h.epoch, h.refs, h.body_len) == (e.kind, e.object_id, e.epoch, e.refs, len(e.body))
    assert env.envelope_length(h) == len(data)


@given(envelopes, st.data())
def test_every_truncation_refused(e, data):
    raw = e.encode()
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(MalformedEnvelope):
        env.decode(raw[:cut])


def test_each_prefix_refused_byte_by_byte():
    raw = env.Envelope(2, b"i" * 32, 3, (b"a" * 32, b"b" * 32), b"t" * 20).encode()
    for cut in range(len(raw)):
        with pytest.raises(MalformedEnvelope):
            env.decode(raw[:cut])


@given(envelopes, st.binary(min_size=1, max_size=40))
def test_trailing_bytes_refused(e, extra):
    with pytest.raises(MalformedEnvelope, match="trailing"):
        env.decode(e.encode() + extra)


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(raw):
    try:
        e = env.decode(raw)
    except MalformedEnvelope:
        return
    assert e.encode() == raw  # anything accepted is an exact encoding


@given(envelopes, st.data())
def test_flipped_header_byte_changes_or_refuses(e, data):
    raw = bytearray(e.encode())
    i = data.draw(st.integers(0, len(e.header_bytes) - 1))
    raw[i] ^= 0xFF
    try:
        d = env.decode(bytes(raw))
    except MalformedEnvelope:
        return
    assert d.header_bytes != e.header_bytes  # so the AEAD (header = associated data) fails


def _fixed(n_refs: int, version: int = env.VERSION, magic: bytes = env.MAGIC, kind: int = 1) -> bytes:
    return struct.pack(">4sBBI32sI", magic, version, kind, 0, b"i" * 32, n_refs)


@pytest.mark.parametrize("raw,why", [
    (_fixed(0, magic=b"XXXX") + struct.pack(">I", 16) + b"t" * 16, "magic"),
    (_fixed(0, version=2) + struct.pack(">I", 16) + b"t" * 16, "version"),
    (_fixed(0, kind=0) + struct.pack(">I", 16) + b"t" * 16, "kind"),
    (_fixed(env.MAX_REFS + 1), "refs exceed"),
    (_fixed(0xFFFFFFFF), "refs exceed"),
    (_fixed(0) + struct.pack(">I", env.MAX_BODY + 1), "body length"),
    (_fixed(0) + struct.pack(">I", 15) + b"t" * 15, "body length"),
])
def test_out_of_range_fields_refused_before_allocation(raw, why):
    with pytest.raises(MalformedEnvelope, match=why):
        env.decode(raw)


def test_encoder_refuses_out_of_range():
    with pytest.raises(MalformedEnvelope):
        env.Envelope(1, b"short", 0, (), b"t" * 16)
    with pytest.raises(MalformedEnvelope):
        env.Envelope(1, b"i" * 32, 0, (), b"t" * 15)
    with pytest.raises(MalformedEnvelope):
        env.Envelope(0, b"i" * 32, 0, (), b"t" * 16)
    with pytest.raises(MalformedEnvelope):
        env.header_bytes(1, b"i" * 32, 2**32, (), 16)
    with pytest.raises(MalformedEnvelope):
        env.header_bytes(1, b"i" * 32, 0, (b"x",), 16)


def test_module_does_not_import_pcloud():
    import ast, pathlib
    tree = ast.parse(pathlib.Path(env.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("pcloud", "consensus")]


@given(envelopes)
def test_header_length_from_prefix(e):
    raw = e.encode()
    assert env.header_length(raw[:env.FIXED_BYTES]) == len(e.header_bytes)
    with pytest.raises(MalformedEnvelope):
        env.header_length(raw[:env.FIXED_BYTES - 1])
