"""Replication wire protocol over transport sessions: message types, bodies, limits, error codes.

Every body is a msgpack map carried by transport (requests, messages, the
STREAM_OPEN metadata of a bulk stream); decoders here check each field's type
and size and raise ProtocolViolation on anything else, so a handler never
sees an unchecked value. Encoders refuse what decoders would refuse.

Objects
-------
``repl.have`` (request)   {ids: bytes(32*n), n <= MAX_HAVE}
                          -> {have: bitmap (bit i = ids[i] present, LSB first), sizes: bytes(4*k)}
                          sizes are the envelope lengths of the k present ids, in order.
``repl.get`` (bulk stream) opened with meta {ids: bytes(32*n), n <= MAX_GET}; the server
                          writes one record per id, in order, then ends the stream:
                          ``status u8 | length u32 | envelope`` with status
                          0 = here it is, 1 = absent (length 0), 2 = unavailable (damaged
                          locally, length 0). A record longer than MAX_ENVELOPE, a status
                          outside the set, extra bytes or an early end is a violation.
Documents
---------
``repl.doc.heads`` (request) {docs: [tag...]} (empty = all)
                          -> {heads: [[tag, device, seq]...], bases: [[tag, device, seq]...]}
                          head = highest seq held (as an entry or inside a checkpoint); base =
                          highest seq folded into checkpoints (entries start after it; listed
                          only for compacted logs, base <= head)
``repl.doc.since`` (request) {doc, device, after, max} -> {entries: [[seq, update]...], more: bool}
                          ``after`` below the log's base fails with ``compacted``: fetch
                          checkpoints first
``repl.doc.push``  (message) {doc, device, seq, u}     a new update, pushed live
``repl.doc.checkpoint`` (request) {doc, covers: [[device, seq]...]}
                          -> {cp: [covers, data] or nil} one checkpoint that covers more than
                          ``covers`` (the asker's heads), if any
``repl.doc.cp``    (message) {doc, covers, data}       a new checkpoint, pushed live
``repl.doc.sv``    (request) {doc, sv} -> {u, covers}  state-vector exchange between devices
                          holding the key: ``sv`` and ``u`` are sealed (opaque here), ``covers``
                          is what the answering state includes (its heads)

Error codes (RequestFailed.code from these handlers; a closed set):
``bad_request`` (malformed body), ``not_found``, ``too_large``, ``unsupported``
(no document log / no vault key here), ``compacted`` (those updates are only in a
checkpoint now), ``cannot_merge`` (a key holder could not open its own pieces, e.g.
a newer key epoch), ``internal`` (local storage failure).

Retry rules: ``absent``/``not_found`` -> ask another peer; ``unavailable`` and
``internal`` -> another peer, this one may recover; ``bad_request`` -> a bug,
do not retry; any violation by the peer -> stop fetching from it in this run.
"""
from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from replication.envelope import FIXED_BYTES, ID_BYTES, MAX_BODY, MAX_REFS
from replication.errors import ProtocolViolation

HAVE = "repl.have"
GET = "repl.get"
DOC_HEADS = "repl.doc.heads"
DOC_SINCE = "repl.doc.since"
DOC_PUSH = "repl.doc.push"
DOC_SV = "repl.doc.sv"
DOC_CHECKPOINT = "repl.doc.checkpoint"
DOC_CP_PUSH = "repl.doc.cp"

MAX_HAVE = 4096
MAX_GET = 1024  # 32 KiB of ids: fits the transport's 64 KiB STREAM_OPEN limit
MAX_ENVELOPE = FIXED_BYTES + 4 + ID_BYTES * MAX_REFS + MAX_BODY
MAX_TAG = 64
MAX_DEVICE = 64
MAX_UPDATE = 4 * 1024 * 1024
MAX_SINCE_BYTES = 4 * 1024 * 1024
MAX_HEADS = 100_000
MAX_SV = 1024 * 1024
MAX_SEQ = (1 << 63) - 1

ST_OK, ST_ABSENT, ST_UNAVAILABLE = 0, 1, 2
_REC = struct.Struct(">BI")

ERROR_CODES = frozenset({"bad_request", "not_found", "too_large", "unsupported", "compacted", "cannot_merge",
                         "internal"})
MAX_COVERS = 10_000
"""Devices one checkpoint may cover (a vault has far fewer)."""


# ---- field checks --------------------------------------------------------------------------

def _map(body: Any, keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ProtocolViolation(f"{what}: body is not a map")
    if set(body) != keys:
        raise ProtocolViolation(f"{what}: fields {sorted(map(str, body))} are not {sorted(keys)}")
    return body


def _bytes(v: Any, what: str, lo: int, hi: int) -> bytes:
    if not isinstance(v, bytes) or not lo <= len(v) <= hi:
        raise ProtocolViolation(f"{what}: expected {lo}..{hi} bytes")
    return v


def _int(v: Any, what: str, lo: int, hi: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolViolation(f"{what}: expected an integer in {lo}..{hi}")
    return v


def _ids(v: Any, what: str, limit: int) -> list[bytes]:
    raw = _bytes(v, what, ID_BYTES, ID_BYTES * limit)
    if len(raw) % ID_BYTES:
        raise ProtocolViolation(f"{what}: length {len(raw)} is not a multiple of {ID_BYTES}")
    return [raw[i:i + ID_BYTES] for i in range(0, len(raw), ID_BYTES)]


def _pack_ids(ids: list[bytes], limit: int) -> bytes:
    if not 1 <= len(ids) <= limit or any(not isinstance(i, bytes) or len(i) != ID_BYTES for i in ids):
        raise ValueError(f"1..{limit} ids of {ID_BYTES} bytes expected")
    return b"".join(ids)


# ---- have ----------------------------------------------------------------------------------

def encode_have_request(ids: list[bytes]) -> dict[str, Any]:
    return {"ids": _pack_ids(ids, MAX_HAVE)}


def decode_have_request(body: Any) -> list[bytes]:
    return _ids(_map(body, {"ids"}, HAVE)["ids"], "have ids", MAX_HAVE)


def encode_have_response(sizes: list[int | None]) -> dict[str, Any]:
    """``sizes[i]`` is the envelope length of id i, or None if absent."""
    bitmap = bytearray((len(sizes) + 7) // 8)
    packed = []
    for i, s in enumerate(sizes):
        if s is not None:
            bitmap[i // 8] |= 1 << (i % 8)
            packed.append(struct.pack(">I", s))
    return {"have": bytes(bitmap), "sizes": b"".join(packed)}


def decode_have_response(body: Any, n: int) -> list[int | None]:
    """Sizes for the ``n`` ids asked (None = absent); ProtocolViolation if inconsistent."""
    m = _map(body, {"have", "sizes"}, "have response")
    bitmap = _bytes(m["have"], "have bitmap", (n + 7) // 8, (n + 7) // 8)
    present = [bool(bitmap[i // 8] >> (i % 8) & 1) for i in range(n)]
    if n % 8 and bitmap[-1] >> (n % 8):
        raise ProtocolViolation("have bitmap has bits set past the ids asked")
    sizes_raw = _bytes(m["sizes"], "have sizes", 0, 4 * n)
    if len(sizes_raw) != 4 * sum(present):
        raise ProtocolViolation("have sizes do not match the bitmap")
    it = iter(struct.unpack(f">{sum(present)}I", sizes_raw))
    out: list[int | None] = []
    for p in present:
        if p:
            s = next(it)
            if not 0 < s <= MAX_ENVELOPE:
                raise ProtocolViolation(f"have size {s} outside 1..{MAX_ENVELOPE}")
            out.append(s)
        else:
            out.append(None)
    return out


# ---- get stream ----------------------------------------------------------------------------

def encode_get_meta(ids: list[bytes]) -> dict[str, Any]:
    return {"ids": _pack_ids(ids, MAX_GET)}


def decode_get_meta(meta: Any) -> list[bytes]:
    return _ids(_map(meta, {"ids"}, GET)["ids"], "get ids", MAX_GET)


def encode_record(status: int, envelope: bytes = b"") -> bytes:
    if status == ST_OK:
        if not 0 < len(envelope) <= MAX_ENVELOPE:
            raise ValueError("envelope size out of range")
    elif status in (ST_ABSENT, ST_UNAVAILABLE):
        if envelope:
            raise ValueError("only an OK record carries an envelope")
    else:
        raise ValueError(f"unknown record status {status}")
    return _REC.pack(status, len(envelope)) + envelope


@dataclass(frozen=True, slots=True)
class Record:
    """One answer on a ``repl.get`` stream."""

    oid: bytes
    """The id asked for at this position."""
    status: int
    """ST_OK, ST_ABSENT or ST_UNAVAILABLE."""
    envelope: bytes
    """The envelope bytes (ST_OK only; unchecked framing)."""


class GetReplyDecoder:
    """Splits a ``repl.get`` stream into one Record per id asked, strictly (sans-I/O).

    ``feed(data)`` returns the records completed by ``data``; ``end()`` checks
    that the stream ended exactly after the last record. Memory is bounded by
    one record (MAX_ENVELOPE) plus what one feed delivered.
    """

    def __init__(self, ids: list[bytes]) -> None:
        self._ids = ids
        self._next = 0
        # Received pieces not yet parsed (the first from offset _skip): a record arriving in many
        # pieces is joined once, and a piece holding a whole record is handed on without a copy.
        self._parts: deque[bytes] = deque()
        self._skip = 0
        self._have = 0
        self._need: tuple[int, int] | None = None  # (status, length) of the record being read

    @property
    def complete(self) -> bool:
        return self._next == len(self._ids)

    def _take(self, n: int) -> bytes:
        """The next ``n`` buffered bytes (n <= _have), copying only what spans pieces or ends mid-piece."""
        self._have -= n
        first = self._parts[0]
        start = self._skip
        if len(first) - start >= n:
            if start == 0 and n == len(first):
                self._parts.popleft()
                return first
            self._skip = start + n
            if self._skip == len(first):
                self._parts.popleft()
                self._skip = 0
            return first[start:start + n]
        pieces: list[bytes | memoryview] = []
        while n:
            first = self._parts[0]
            avail = len(first) - self._skip
            if avail <= n:
                pieces.append(memoryview(first)[self._skip:] if self._skip else first)
                self._parts.popleft()
                self._skip = 0
                n -= avail
            else:
                pieces.append(memoryview(first)[self._skip:self._skip + n])
                self._skip += n
                n = 0
        return b"".join(pieces)

    def feed(self, data: bytes) -> list[Record]:
        if data and self.complete:
            raise ProtocolViolation("bytes after the last get record")
        if data:
            self._parts.append(bytes(data))
            self._have += len(data)
        out: list[Record] = []
        while not self.complete:
            if self._need is None:
                if self._have < _REC.size:
                    break
                status, length = _REC.unpack(self._take(_REC.size))
                if status == ST_OK:
                    if not 0 < length <= MAX_ENVELOPE:
                        raise ProtocolViolation(f"get record of {length} bytes outside 1..{MAX_ENVELOPE}")
                elif status in (ST_ABSENT, ST_UNAVAILABLE):
                    if length:
                        raise ProtocolViolation("absent/unavailable get record with a body")
                else:
                    raise ProtocolViolation(f"unknown get record status {status}")
                self._need = (status, length)
            status, length = self._need
            if self._have < length:
                break
            body = self._take(length) if length else b""
            self._need = None
            out.append(Record(self._ids[self._next], status, body))
            self._next += 1
        if self.complete and self._have:
            raise ProtocolViolation("bytes after the last get record")
        return out

    def end(self) -> None:
        if not self.complete:
            raise ProtocolViolation(f"get stream ended after {self._next} of {len(self._ids)} records")


# ---- documents -----------------------------------------------------------------------------

def _tag(v: Any) -> bytes:
    return _bytes(v, "doc tag", 1, MAX_TAG)


def _device(v: Any) -> bytes:
    return _bytes(v, "device", 1, MAX_DEVICE)


def encode_heads_request(docs: list[bytes]) -> dict[str, Any]:
    return {"docs": [_tag(d) for d in docs]}


def decode_heads_request(body: Any) -> list[bytes]:
    docs = _map(body, {"docs"}, DOC_HEADS)["docs"]
    if not isinstance(docs, list) or len(docs) > MAX_HEADS:
        raise ProtocolViolation("heads docs: a list of at most %d tags" % MAX_HEADS)
    return [_tag(d) for d in docs]


def encode_heads_response(heads: dict[tuple[bytes, bytes], int],
                          bases: dict[tuple[bytes, bytes], int] | None = None) -> dict[str, Any]:
    return {"heads": [[d, dev, s] for (d, dev), s in heads.items()],
            "bases": [[d, dev, s] for (d, dev), s in (bases or {}).items()]}


def _log_rows(rows: Any, what: str, lo: int) -> dict[tuple[bytes, bytes], int]:
    if not isinstance(rows, list) or len(rows) > MAX_HEADS:
        raise ProtocolViolation(f"{what}: a list of at most {MAX_HEADS} rows")
    out: dict[tuple[bytes, bytes], int] = {}
    for r in rows:
        if not isinstance(r, list) or len(r) != 3:
            raise ProtocolViolation(f"{what} row is [doc, device, seq]")
        out[(_tag(r[0]), _device(r[1]))] = _int(r[2], f"{what} seq", lo, MAX_SEQ)
    return out


def decode_heads_response(body: Any) -> tuple[dict[tuple[bytes, bytes], int], dict[tuple[bytes, bytes], int]]:
    """(heads, bases); a base above its head, or without one, is a violation."""
    m = _map(body, {"heads", "bases"}, "heads response")
    heads, bases = _log_rows(m["heads"], "heads", 1), _log_rows(m["bases"], "bases", 1)
    for key, base in bases.items():
        if base > heads.get(key, 0):
            raise ProtocolViolation(f"base {base} above head {heads.get(key, 0)} of a log")
    return heads, bases


def encode_since_request(doc: bytes, device: bytes, after: int, max_bytes: int) -> dict[str, Any]:
    return {"doc": _tag(doc), "device": _device(device), "after": _int(after, "after", 0, MAX_SEQ),
            "max": _int(max_bytes, "max", 1, MAX_SINCE_BYTES)}


def decode_since_request(body: Any) -> tuple[bytes, bytes, int, int]:
    m = _map(body, {"doc", "device", "after", "max"}, DOC_SINCE)
    return (_tag(m["doc"]), _device(m["device"]), _int(m["after"], "after", 0, MAX_SEQ),
            _int(m["max"], "max", 1, MAX_SINCE_BYTES))


def encode_since_response(entries: list[tuple[int, bytes]], more: bool) -> dict[str, Any]:
    return {"entries": [[s, u] for s, u in entries], "more": more}


def decode_since_response(body: Any, after: int) -> tuple[list[tuple[int, bytes]], bool]:
    """Entries must be consecutive from ``after + 1``; ``more`` requires at least one entry."""
    m = _map(body, {"entries", "more"}, "since response")
    rows, more = m["entries"], m["more"]
    if not isinstance(more, bool) or not isinstance(rows, list) or len(rows) > MAX_SINCE_BYTES // 16 + 1:
        raise ProtocolViolation("since response: entries list and more flag")
    out: list[tuple[int, bytes]] = []
    expect = after + 1
    for r in rows:
        if not isinstance(r, list) or len(r) != 2:
            raise ProtocolViolation("since entry is [seq, update]")
        seq = _int(r[0], "since seq", 1, MAX_SEQ)
        if seq != expect:
            raise ProtocolViolation(f"since entries not consecutive: got seq {seq}, expected {expect}")
        out.append((seq, _bytes(r[1], "update", 1, MAX_UPDATE)))
        expect += 1
    if more and not out:
        raise ProtocolViolation("since response says more but carries nothing")
    return out, more


@dataclass(frozen=True, slots=True)
class DocUpdate:
    """One sealed document update as it travels."""

    doc: bytes
    """Opaque doc tag."""
    device: bytes
    """Author device key."""
    seq: int
    """Position in the author's log for this doc (1, 2, ...)."""
    update: bytes
    """Sealed update bytes."""


def encode_push(u: DocUpdate) -> dict[str, Any]:
    return {"doc": _tag(u.doc), "device": _device(u.device), "seq": _int(u.seq, "seq", 1, MAX_SEQ),
            "u": _bytes(u.update, "update", 1, MAX_UPDATE)}


def decode_push(body: Any) -> DocUpdate:
    m = _map(body, {"doc", "device", "seq", "u"}, DOC_PUSH)
    return DocUpdate(_tag(m["doc"]), _device(m["device"]), _int(m["seq"], "seq", 1, MAX_SEQ),
                     _bytes(m["u"], "update", 1, MAX_UPDATE))


def encode_sv_request(doc: bytes, sv: bytes) -> dict[str, Any]:
    return {"doc": _tag(doc), "sv": _bytes(sv, "state vector", 1, MAX_SV)}


def decode_sv_request(body: Any) -> tuple[bytes, bytes]:
    m = _map(body, {"doc", "sv"}, DOC_SV)
    return _tag(m["doc"]), _bytes(m["sv"], "state vector", 1, MAX_SV)


def encode_sv_response(update: bytes, covers: dict[bytes, int]) -> dict[str, Any]:
    return {"u": _bytes(update, "sv update", 1, MAX_UPDATE), "covers": _encode_covers(covers)}


def decode_sv_response(body: Any) -> tuple[bytes, dict[bytes, int]]:
    """(sealed update, what the answering state covers: device -> seq)."""
    m = _map(body, {"u", "covers"}, "sv response")
    return _bytes(m["u"], "sv update", 1, MAX_UPDATE), _decode_covers(m["covers"], 0)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A sealed document state that includes every update (device, seq <= covers[device]).

    Made by a device holding the key (it merges the updates it replaces); a
    key-less node only stores, serves and forwards it. Replaces those updates
    in a log (compaction).
    """

    doc: bytes
    covers: dict[bytes, int]
    data: bytes

    def dominated_by(self, covers: dict[bytes, int]) -> bool:
        """True if ``covers`` includes everything this checkpoint does."""
        return all(covers.get(dev, 0) >= seq for dev, seq in self.covers.items())


def _encode_covers(covers: dict[bytes, int]) -> list[list[Any]]:
    if len(covers) > MAX_COVERS:
        raise ProtocolViolation(f"covers: at most {MAX_COVERS} devices")
    return [[_device(dev), _int(seq, "covers seq", 1, MAX_SEQ)] for dev, seq in sorted(covers.items())]


def _decode_covers(v: Any, lo: int) -> dict[bytes, int]:
    if not isinstance(v, list) or not lo <= len(v) <= MAX_COVERS:
        raise ProtocolViolation(f"covers: a list of {lo}..{MAX_COVERS} [device, seq] rows")
    out: dict[bytes, int] = {}
    for r in v:
        if not isinstance(r, list) or len(r) != 2:
            raise ProtocolViolation("covers row is [device, seq]")
        dev = _device(r[0])
        if dev in out:
            raise ProtocolViolation("covers lists a device twice")
        out[dev] = _int(r[1], "covers seq", 1, MAX_SEQ)
    return out


def encode_checkpoint_request(doc: bytes, covers: dict[bytes, int]) -> dict[str, Any]:
    return {"doc": _tag(doc), "covers": _encode_covers(covers)}


def decode_checkpoint_request(body: Any) -> tuple[bytes, dict[bytes, int]]:
    m = _map(body, {"doc", "covers"}, DOC_CHECKPOINT)
    return _tag(m["doc"]), _decode_covers(m["covers"], 0)


def encode_checkpoint_response(cp: Checkpoint | None) -> dict[str, Any]:
    if cp is None:
        return {"cp": None}
    return {"cp": [_encode_covers(cp.covers), _bytes(cp.data, "checkpoint", 1, MAX_UPDATE)]}


def decode_checkpoint_response(body: Any, doc: bytes) -> Checkpoint | None:
    v = _map(body, {"cp"}, "checkpoint response")["cp"]
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != 2:
        raise ProtocolViolation("checkpoint is [covers, data]")
    return Checkpoint(doc, _decode_covers(v[0], 1), _bytes(v[1], "checkpoint", 1, MAX_UPDATE))


def encode_cp_push(cp: Checkpoint) -> dict[str, Any]:
    return {"doc": _tag(cp.doc), "covers": _encode_covers(cp.covers),
            "data": _bytes(cp.data, "checkpoint", 1, MAX_UPDATE)}


def decode_cp_push(body: Any) -> Checkpoint:
    m = _map(body, {"doc", "covers", "data"}, DOC_CP_PUSH)
    return Checkpoint(_tag(m["doc"]), _decode_covers(m["covers"], 1), _bytes(m["data"], "checkpoint", 1, MAX_UPDATE))


__all__ = [
    "HAVE", "GET", "DOC_HEADS", "DOC_SINCE", "DOC_PUSH", "DOC_SV", "DOC_CHECKPOINT", "DOC_CP_PUSH", "Checkpoint", "MAX_HAVE", "MAX_GET", "MAX_ENVELOPE",
    "MAX_UPDATE", "MAX_TAG", "MAX_DEVICE", "MAX_SINCE_BYTES", "ST_OK", "ST_ABSENT", "ST_UNAVAILABLE",
    "ERROR_CODES", "Record", "GetReplyDecoder", "DocUpdate",
    "encode_have_request", "decode_have_request", "encode_have_response", "decode_have_response",
    "encode_get_meta", "decode_get_meta", "encode_record",
    "encode_heads_request", "decode_heads_request", "encode_heads_response", "decode_heads_response",
    "encode_since_request", "decode_since_request", "encode_since_response", "decode_since_response",
    "encode_push", "decode_push", "encode_sv_request", "decode_sv_request", "encode_sv_response",
    "decode_sv_response", "encode_checkpoint_request", "decode_checkpoint_request",
    "encode_checkpoint_response", "decode_checkpoint_response", "encode_cp_push", "decode_cp_push",
]
