"""Replication wire protocol: round trips, strict decoding, limits, and hypothesis fuzzing of every decoder."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from replication import protocol as p
from replication.errors import ProtocolViolation

IDS = [os.urandom(32) for _ in range(20)]
ANY = st.recursive(
    st.none() | st.booleans() | st.integers() | st.binary(max_size=80) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def records(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join(p.encode_record(s, e) for s, e in items)


def test_have_round_trip_and_strictness() -> None:
    assert p.decode_have_request(p.encode_have_request(IDS)) == IDS
    sizes = [None, 5, None, None, 7, 9, None, 1, 2, None]
    assert p.decode_have_response(p.encode_have_response(sizes), len(sizes)) == sizes
    good = p.encode_have_response(sizes)
    with pytest.raises(ProtocolViolation):
        p.decode_have_response(good, len(sizes) + 8)  # bitmap length must match the ids asked
    with pytest.raises(ProtocolViolation):
        p.decode_have_response({**good, "sizes": good["sizes"][:-4]}, len(sizes))
    with pytest.raises(ProtocolViolation):
        p.decode_have_response({"have": b"\xff\xff", "sizes": b"\0\0\0\1" * 16}, 10)  # bits past n
    with pytest.raises(ProtocolViolation):
        p.decode_have_response({"have": b"\x01", "sizes": b"\0\0\0\0"}, 1)  # size 0
    with pytest.raises(ProtocolViolation):
        p.decode_have_request({"ids": b"x" * 33})
    with pytest.raises(ProtocolViolation):
        p.decode_have_request({"ids": b"x" * 32 * (p.MAX_HAVE + 1)})
    with pytest.raises(ProtocolViolation):
        p.decode_have_request({"ids": b"x" * 32, "extra": 1})
    with pytest.raises(ValueError):
        p.encode_have_request([])


def test_get_records_whole_bytewise_and_with_trailing_bytes() -> None:
    env1, env2 = os.urandom(100), os.urandom(3000)
    ids = IDS[:4]
    wire = records([(p.ST_OK, env1), (p.ST_ABSENT, b""), (p.ST_OK, env2), (p.ST_UNAVAILABLE, b"")])
    whole = p.GetReplyDecoder(ids).feed(wire)
    assert [(r.oid, r.status, r.envelope) for r in whole] == [
        (ids[0], p.ST_OK, env1), (ids[1], p.ST_ABSENT, b""), (ids[2], p.ST_OK, env2), (ids[3], p.ST_UNAVAILABLE, b"")]
    dec = p.GetReplyDecoder(ids)
    bytewise = [r for i in range(len(wire)) for r in dec.feed(wire[i:i + 1])]
    assert bytewise == whole and dec.complete
    dec.end()
    with pytest.raises(ProtocolViolation):
        p.GetReplyDecoder(ids).feed(wire + b"\0")
    short = p.GetReplyDecoder(ids)
    short.feed(wire[:-1])
    with pytest.raises(ProtocolViolation):
        short.end()
    assert p.decode_get_meta(p.encode_get_meta(ids)) == ids


@pytest.mark.parametrize("bad", [
    struct.pack(">BI", 3, 0),                       # unknown status
    struct.pack(">BI", p.ST_OK, 0),                 # empty envelope
    struct.pack(">BI", p.ST_ABSENT, 5) + b"12345",  # absent with a body
    struct.pack(">BI", p.ST_OK, p.MAX_ENVELOPE + 1),  # over the limit, refused from the header alone
])
def test_get_record_violations(bad: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        p.GetReplyDecoder(IDS[:1]).feed(bad)


def test_encoders_refuse_what_decoders_refuse() -> None:
    with pytest.raises(ValueError):
        p.encode_record(p.ST_OK, b"")
    with pytest.raises(ValueError):
        p.encode_record(7)
    with pytest.raises(ProtocolViolation):
        p.encode_push(p.DocUpdate(b"", b"dev", 1, b"u"))
    with pytest.raises(ProtocolViolation):
        p.encode_push(p.DocUpdate(b"d", b"dev", 0, b"u"))
    with pytest.raises(ProtocolViolation):
        p.encode_since_request(b"d", b"dev", -1, 10)


def test_doc_messages_round_trip_and_consecutive_since() -> None:
    u = p.DocUpdate(b"tag", b"k" * 32, 3, b"sealed")
    assert p.decode_push(p.encode_push(u)) == u
    heads = {(b"t1", b"d1"): 4, (b"t2", b"d1"): 1}
    assert p.decode_heads_response(p.encode_heads_response(heads)) == (heads, {})
    bases = {(b"t1", b"d1"): 3}
    assert p.decode_heads_response(p.encode_heads_response(heads, bases)) == (heads, bases)
    with pytest.raises(ProtocolViolation):     # a base above its head
        p.decode_heads_response(p.encode_heads_response(heads, {(b"t2", b"d1"): 2}))
    with pytest.raises(ProtocolViolation):     # a base of a log with no head
        p.decode_heads_response(p.encode_heads_response(heads, {(b"t3", b"d1"): 1}))
    assert p.decode_heads_request(p.encode_heads_request([b"t1"])) == [b"t1"]
    assert p.decode_since_request(p.encode_since_request(b"t", b"d", 2, 100)) == (b"t", b"d", 2, 100)
    body = p.encode_since_response([(3, b"a"), (4, b"b")], True)
    assert p.decode_since_response(body, 2) == ([(3, b"a"), (4, b"b")], True)
    with pytest.raises(ProtocolViolation):
        p.decode_since_response(body, 1)  # must start right after 'after'
    with pytest.raises(ProtocolViolation):
        p.decode_since_response(p.encode_since_response([(3, b"a"), (5, b"b")], False), 2)
    with pytest.raises(ProtocolViolation):
        p.decode_since_response(p.encode_since_response([], True), 2)
    with pytest.raises(ProtocolViolation):
        p.decode_heads_response({"heads": [[b"t", b"d", 0]], "bases": []})
    with pytest.raises(ProtocolViolation):
        p.decode_heads_response({"heads": [[b"t", b"d", True]], "bases": []})
    assert p.decode_sv_request(p.encode_sv_request(b"t", b"\x00")) == (b"t", b"\x00")
    with pytest.raises(ProtocolViolation):
        p.encode_sv_request(b"t", b"")
    covers = {b"d1": 4, b"d2": 9}
    assert p.decode_sv_response(p.encode_sv_response(b"u", covers)) == (b"u", covers)
    assert p.decode_sv_response(p.encode_sv_response(b"u", {})) == (b"u", {})


def test_checkpoint_messages_round_trip_and_refuse_bad_covers() -> None:
    cp = p.Checkpoint(b"tag", {b"d1": 4, b"d2": 1}, b"sealed state")
    assert p.decode_cp_push(p.encode_cp_push(cp)) == cp
    assert p.decode_checkpoint_request(p.encode_checkpoint_request(b"tag", {b"d1": 2})) == (b"tag", {b"d1": 2})
    assert p.decode_checkpoint_request(p.encode_checkpoint_request(b"tag", {})) == (b"tag", {})
    assert p.decode_checkpoint_response(p.encode_checkpoint_response(cp), b"tag") == cp
    assert p.decode_checkpoint_response(p.encode_checkpoint_response(None), b"tag") is None
    assert cp.dominated_by({b"d1": 4, b"d2": 1, b"d3": 7}) and not cp.dominated_by({b"d1": 4})
    for covers in ([], [[b"d1", 1], [b"d1", 2]], [[b"d1", 0]], [[b"d1"]], "x", [[b"", 1]]):
        with pytest.raises(ProtocolViolation):
            p.decode_cp_push({"doc": b"tag", "covers": covers, "data": b"x"})
    with pytest.raises(ProtocolViolation):
        p.decode_cp_push({"doc": b"tag", "covers": [[b"d1", 1]], "data": b""})
    with pytest.raises(ProtocolViolation):
        p.decode_checkpoint_response({"cp": [[[b"d", 1]]]}, b"tag")


DECODERS = [
    p.decode_have_request, p.decode_get_meta, p.decode_heads_request, p.decode_heads_response,
    p.decode_since_request, p.decode_push, p.decode_sv_request, p.decode_sv_response,
    lambda b: p.decode_have_response(b, 9), lambda b: p.decode_since_response(b, 0),
    p.decode_checkpoint_request, p.decode_cp_push, lambda b: p.decode_checkpoint_response(b, b"tag"),
]


@settings(max_examples=300, deadline=None)
@given(body=ANY, which=st.integers(0, len(DECODERS) - 1))
def test_fuzz_body_decoders_raise_only_protocol_violation(body: object, which: int) -> None:
    try:
        DECODERS[which](body)
    except ProtocolViolation:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(1, 50), n=st.integers(1, 4))
def test_fuzz_get_stream_decoder(data: bytes, cut: int, n: int) -> None:
    dec = p.GetReplyDecoder(IDS[:n])
    got = []
    try:
        for i in range(0, len(data), cut):
            got.extend(dec.feed(data[i:i + cut]))
        dec.end()
    except ProtocolViolation:
        return
    # accepted: it was exactly n well-formed records, and re-encoding gives the input back
    assert len(got) == n and records([(r.status, r.envelope) for r in got]) == data


@settings(max_examples=200, deadline=None)
@given(bodies=st.lists(st.one_of(st.none(), st.binary(min_size=1, max_size=900)), min_size=1, max_size=8),
       cuts=st.lists(st.integers(0, 8000), max_size=12))
def test_get_stream_decoder_any_split_of_valid_records(bodies: list[bytes | None], cuts: list[int]) -> None:
    """Records split anywhere (inside headers, across several pieces) come out exactly as sent."""
    items = [(p.ST_ABSENT, b"") if b is None else (p.ST_OK, b) for b in bodies]
    wire = records(items)
    points = sorted({0, len(wire), *(c % (len(wire) + 1) for c in cuts)})
    dec = p.GetReplyDecoder(IDS[:len(items)])
    got = [r for a, b in zip(points, points[1:]) for r in dec.feed(wire[a:b])]
    dec.end()
    assert [(r.oid, r.status, r.envelope) for r in got] == [(IDS[i], st_, b) for i, (st_, b) in enumerate(items)]
    assert all(type(r.envelope) is bytes for r in got)


@settings(max_examples=100, deadline=None)
@given(sizes=st.lists(st.one_of(st.none(), st.integers(1, p.MAX_ENVELOPE)), min_size=1, max_size=70))
def test_have_response_round_trips_any_sizes(sizes: list[int | None]) -> None:
    assert p.decode_have_response(p.encode_have_response(sizes), len(sizes)) == sizes
