"""``repl.offer``: a device tells a peer "I have just stored these objects, fetch them if you keep them".

Why: a big file's chunks are stored by its writer long before the commit
naming it moves ``main`` (hashing and sealing 256 MiB takes ~0.5 s here). A
full replica that is told the chunk ids as they are stored fetches them while
the writer is still hashing, so when the commit arrives only its metadata is
left to fetch. It is an offer, never a push: the receiver decides (a device
that does not keep everything, e.g. on-demand or archive, answers "not
taken" and fetches nothing), and the bytes move through the ordinary
``repl.get`` path with its verification and memory bounds.

Wire (a request on a session, msgpack body; see replication.protocol for the
conventions):

``repl.offer`` {ids: bytes(32*n), 1 <= n <= MAX_OFFER_IDS, tag: bytes(<= MAX_OFFER_TAG)}
               -> {taken: bool}

``tag`` is opaque to replication: the application above (pcloud) uses it to
say where the chunks belong (which file, at which offsets), so the receiver
can place their plaintext as it stores them. Malformed bodies fail the
request with ``bad_request`` and change nothing.
"""
from __future__ import annotations

from typing import Any

from replication.errors import ProtocolViolation
from replication.protocol import _bytes, _ids, _map, _pack_ids

OFFER = "repl.offer"
MAX_OFFER_IDS = 1024
"""Ids per offer (32 KiB of ids; a sender splits longer lists)."""
MAX_OFFER_TAG = 64 * 1024
"""Bytes of the application's tag per offer."""


def encode_offer(ids: list[bytes], tag: bytes = b"") -> dict[str, Any]:
    """The body of an offer of ``ids`` (1..MAX_OFFER_IDS ids of 32 bytes); ValueError otherwise."""
    if not isinstance(tag, bytes) or len(tag) > MAX_OFFER_TAG:
        raise ValueError(f"an offer's tag is at most {MAX_OFFER_TAG} bytes")
    return {"ids": _pack_ids(ids, MAX_OFFER_IDS), "tag": tag}


def decode_offer(body: Any) -> tuple[list[bytes], bytes]:
    """(ids, tag) of an offer body; ProtocolViolation if it is malformed or too large."""
    m = _map(body, {"ids", "tag"}, OFFER)
    return _ids(m["ids"], "offer ids", MAX_OFFER_IDS), _bytes(m["tag"], "offer tag", 0, MAX_OFFER_TAG)


def encode_offer_response(taken: bool) -> dict[str, Any]:
    return {"taken": bool(taken)}


def decode_offer_response(body: Any) -> bool:
    taken = _map(body, {"taken"}, OFFER + " response")["taken"]
    if not isinstance(taken, bool):
        raise ProtocolViolation(f"{OFFER} response: taken is not a boolean")
    return taken


__all__ = ["OFFER", "MAX_OFFER_IDS", "MAX_OFFER_TAG", "encode_offer", "decode_offer", "encode_offer_response",
           "decode_offer_response"]
