"""pysyncobj's Transport over a pcloud link, with a pickle-free, schema-checked wire format.

What runs over what
-------------------
pysyncobj produces Raft messages as small dicts. ``LinkTransport.send`` encodes
each with ``encode_message`` (msgpack, fixed schema) and queues it; after each
tick the glue (``consensus.raft``) makes the journal durable and then calls
``flush()``, which sends one frame per peer (``msgpack [msg, msg, ...]``)
through a ``RaftLink``: authenticated transport sessions in production
(``consensus.session_link``), an authenticated TCP link on loopback in tests
(``consensus.tcp_link``).

Log entries never travel as pickles. pysyncobj's entry bytes are
``type byte || pickle``; on the wire an entry is ``[kind, payload..., idx,
term]`` where a regular entry's payload is the signed command bytes, a
membership entry is ``[op, node_id]``, a version entry an int, a no-op nothing.
The receiver rebuilds the pickle locally from those plain values
(``wire_to_entry_command``), so no byte from a peer reaches an unpickler.

Invariants
----------
* ``decode_frame`` accepts only known message types with exactly the fields
  their schema allows, each of the right type; anything else raises
  ``RemoteProtocolError`` (from ``transport.errors``) and the frame is dropped and
  logged by the transport: a bad peer loses its message, the node goes on.
* Frames are bounded (``MAX_FRAME``) and so is the number of messages per frame.
* Node ids are lowercase hex of the 32-byte device key.
"""
from __future__ import annotations

import logging
import pickle
from typing import Any, Callable, Iterable, Protocol

import msgpack
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from consensus import safe_pickle
from transport.errors import MessageTooLarge, RemoteProtocolError

logger = logging.getLogger(__name__)

MAX_FRAME = 4 * 1024 * 1024
MAX_MESSAGES_PER_FRAME = 4096
REGULAR, NO_OP, MEMBERSHIP, VERSION = 0, 1, 2, 3
REPLICATED_FUNC_ID = 0   # our SyncObj has exactly one replicated method


class RaftLink(Protocol):
    """What the Raft transport needs from the layer below: fire-and-forget frames to device keys."""

    def set_handler(self, handler: LinkHandler) -> None:
        """Deliver this link's events to ``handler`` from now on, starting with a
        ``link_up`` for every peer already connected."""
        ...

    def send(self, peer: bytes, frame: bytes) -> None:
        """Send ``frame`` to ``peer`` if a session is up; drop it silently otherwise (Raft retries)."""
        ...

    def connected_peers(self) -> set[bytes]:
        """Device keys with a session up right now."""
        ...


class LinkHandler(Protocol):
    """What a ``RaftLink`` calls (on the event loop thread)."""

    def link_up(self, peer: bytes) -> None: ...

    def link_down(self, peer: bytes) -> None: ...

    def link_message(self, peer: bytes, frame: bytes) -> None: ...


def node_id(key: bytes) -> str:
    return key.hex()


def node_key(node: Node | str) -> bytes:
    return bytes.fromhex(node.id if isinstance(node, Node) else node)


# ---------------------------------------------------------------- entries


def entry_command_to_wire(command: bytes) -> list[Any]:
    """pysyncobj entry bytes (type byte + local pickle) -> plain msgpack-able values."""
    kind = command[0]
    if kind == NO_OP:
        return [NO_OP]
    if kind == REGULAR:
        payload = safe_pickle.loads(command[1:])
        if not (isinstance(payload, tuple) and len(payload) == 2 and payload[0] == REPLICATED_FUNC_ID
                and isinstance(payload[1], tuple) and len(payload[1]) == 1 and isinstance(payload[1][0], bytes)):
            raise ValueError("unexpected regular entry shape")
        return [REGULAR, payload[1][0]]
    if kind == MEMBERSHIP:
        op, nid, _node = safe_pickle.loads(command[1:])
        return [MEMBERSHIP, op, nid]
    if kind == VERSION:
        return [VERSION, safe_pickle.loads(command[1:])]
    raise ValueError(f"unknown entry type {kind}")


def wire_to_entry_command(wire: Any) -> bytes:
    """The inverse: rebuild pysyncobj's entry bytes locally from checked plain values."""
    if not isinstance(wire, list) or not wire or not isinstance(wire[0], int):
        raise RemoteProtocolError("malformed log entry")
    kind = wire[0]
    if kind == NO_OP and len(wire) == 1:
        return bytes([NO_OP])
    if kind == REGULAR and len(wire) == 2 and isinstance(wire[1], bytes):
        return bytes([REGULAR]) + pickle.dumps((REPLICATED_FUNC_ID, (wire[1],)), 2)
    if (kind == MEMBERSHIP and len(wire) == 3 and wire[1] in ("add", "rem") and isinstance(wire[2], str)
            and _is_node_id(wire[2])):
        return bytes([MEMBERSHIP]) + pickle.dumps([wire[1], wire[2], Node(wire[2])], 2)
    if kind == VERSION and len(wire) == 2 and _is_uint(wire[1]):
        return bytes([VERSION]) + pickle.dumps(wire[1], 2)
    raise RemoteProtocolError(f"malformed log entry of kind {kind}")


def _is_node_id(value: Any) -> bool:
    if not isinstance(value, str) or len(value) != 64:
        return False
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def entry_to_wire(entry: tuple[bytes, int, int]) -> list[Any]:
    return [entry_command_to_wire(entry[0]), entry[1], entry[2]]


def wire_to_entry(wire: Any) -> tuple[bytes, int, int]:
    if not (isinstance(wire, list) and len(wire) == 3 and _is_uint(wire[1]) and _is_uint(wire[2])):
        raise RemoteProtocolError("malformed log entry")
    return (wire_to_entry_command(wire[0]), wire[1], wire[2])


# ---------------------------------------------------------------- messages


def _opt(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _serialized(v: Any) -> bool:
    return v is None or (isinstance(v, list) and len(v) == 3 and isinstance(v[0], bytes)
                         and isinstance(v[1], bool) and isinstance(v[2], bool))


def _entries(v: Any) -> bool:
    return isinstance(v, list)


def _any_command(v: Any) -> bool:
    return isinstance(v, list)


READONLY_MAY_SEND = frozenset({"next_node_idx", "apply_command"})
"""What a peer outside the current Raft configuration (a non-voter) may send."""

# message type -> (required fields, optional fields), each field -> checker.
SCHEMA: dict[str, tuple[dict[str, Callable[[Any], bool]], dict[str, Callable[[Any], bool]]]] = {
    "request_vote": ({"term": _is_uint, "last_log_index": _is_uint, "last_log_term": _is_uint}, {}),
    "response_vote": ({"term": _is_uint}, {}),
    "timeout_now": ({"term": _is_uint}, {}),
    "append_entries": ({"term": _is_uint, "commit_index": _is_uint},
                       {"entries": _entries, "prevLogIdx": _opt(_is_uint), "prevLogTerm": _opt(_is_uint),
                        "serialized": _serialized}),
    "next_node_idx": ({"next_node_idx": _is_uint, "reset": _bool, "success": _bool}, {}),
    "apply_command": ({"command": _any_command}, {"request_id": _is_uint}),
    "apply_command_response": ({"request_id": _is_uint},
                               {"error": _is_uint, "log_idx": _is_uint, "log_term": _is_uint}),
}


def encode_message(message: dict[str, Any], cache: dict[bytes, list[Any]] | None = None) -> dict[str, Any]:
    """pysyncobj's message dict -> a msgpack-able dict with entries in wire form.

    ``cache`` (entry bytes -> wire form) lets one tick's appends to several followers
    unpickle each (locally made) entry once."""
    kind = message["type"]
    if kind not in SCHEMA or "transmission" in message:
        # 'transmission' splits one huge entry into pickled chunks; our entries are
        # bounded far below appendEntriesBatchSizeBytes, so it never happens.
        raise ValueError(f"cannot send Raft message {kind!r}{' (chunked entry)' if 'transmission' in message else ''}")
    out = dict(message)
    if "entries" in out:
        if cache is None:
            out["entries"] = [entry_to_wire(e) for e in out["entries"]]
        else:
            wire = []
            for command, idx, term in out["entries"]:
                body = cache.get(command)
                if body is None:
                    body = cache[command] = entry_command_to_wire(command)
                wire.append([body, idx, term])
            out["entries"] = wire
    if "command" in out:
        out["command"] = entry_command_to_wire(out["command"])
    if out.get("serialized") is not None:
        out["serialized"] = list(out["serialized"])
    return out


def decode_message(raw: Any) -> dict[str, Any]:
    """Check a received dict against ``SCHEMA`` and rebuild entries; raise ``RemoteProtocolError``."""
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str) or raw["type"] not in SCHEMA:
        raise RemoteProtocolError("unknown Raft message type")
    required, optional = SCHEMA[raw["type"]]
    for key, value in raw.items():
        if key == "type":
            continue
        check = required.get(key) or optional.get(key)
        if check is None:
            raise RemoteProtocolError(f"unexpected field {key!r} in {raw['type']}")
        if not check(value):
            raise RemoteProtocolError(f"bad value for {key!r} in {raw['type']}")
    missing = set(required) - set(raw)
    if missing:
        raise RemoteProtocolError(f"{raw['type']} lacks {', '.join(sorted(missing))}")
    msg = dict(raw)
    if "entries" in msg:
        msg["entries"] = [wire_to_entry(e) for e in msg["entries"]]
    if "command" in msg:
        msg["command"] = wire_to_entry_command(msg["command"])
    if msg.get("serialized") is not None:
        msg["serialized"] = tuple(msg["serialized"])
    return msg


def encode_frame(messages: Iterable[dict[str, Any]]) -> bytes:
    return msgpack.packb(list(messages), use_bin_type=True)


def decode_frame(frame: bytes) -> list[dict[str, Any]]:
    """Bytes from a peer -> checked pysyncobj messages; ``RemoteProtocolError`` if anything is off."""
    if len(frame) > MAX_FRAME:
        raise MessageTooLarge(f"Raft frame of {len(frame)} bytes is over {MAX_FRAME}")
    try:
        raw = msgpack.unpackb(frame, raw=False, strict_map_key=True, max_ext_len=0,
                              max_array_len=max(MAX_MESSAGES_PER_FRAME, 65536), max_map_len=16)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise RemoteProtocolError(f"Raft frame does not decode: {exc}") from exc
    if not isinstance(raw, list) or len(raw) > MAX_MESSAGES_PER_FRAME:
        raise RemoteProtocolError("a Raft frame is a bounded list of messages")
    return [decode_message(m) for m in raw]


# ---------------------------------------------------------------- the Transport


class LinkTransport(Transport):
    """pysyncobj ``Transport`` over a ``RaftLink``; drive it from one thread (the event loop).

    Connected peers that are voters in pysyncobj's current configuration are
    reported as nodes; any other connected peer (the link admits enrolled
    devices only) is a read-only node, i.e. a non-voting replica.
    """

    def __init__(self, link: RaftLink, self_key: bytes, voters: Iterable[bytes]) -> None:
        super().__init__(None, None, [])
        self._link = link
        self._self_key = self_key
        self._voters: dict[bytes, Node] = {k: Node(node_id(k)) for k in voters if k != self_key}
        self._readonly: dict[bytes, Node] = {}
        self._up: set[bytes] = set()
        self._outbox: dict[bytes, list[dict[str, Any]]] = {}
        self._wire_cache: dict[bytes, list[Any]] = {}
        """Entry bytes -> wire form, for the messages of one flush (bounded by what one tick sends)."""
        self.dropped_frames = 0
        self.dropped_messages = 0
        self.last_frame_acks_only = False
        """The last frame handed to pysyncobj held only append acks (``next_node_idx``)."""
        self.on_activity: Callable[[], None] = lambda: None
        """Called after inbound messages were handed to pysyncobj (the glue ticks then)."""

    # pysyncobj -> transport
    def addNode(self, node: Node) -> None:
        key = node_key(node)
        if key == self._self_key:
            return
        self._voters[key] = node
        if key in self._readonly:
            # A non-voter that just became a voter: announce it in its new role. No
            # readonly-disconnect: pysyncobj would drop the match index it just set.
            del self._readonly[key]
            self._onNodeConnected(node)
        elif key in self._up:
            self._onNodeConnected(node)

    def dropNode(self, node: Node) -> None:
        key = node_key(node)
        self._voters.pop(key, None)
        self._outbox.pop(key, None)
        if key in self._up:
            self._announce_up(key)

    def send(self, node: Node, message: dict[str, Any]) -> bool:
        key = node_key(node)
        if key not in self._up:
            return False
        self._outbox.setdefault(key, []).append(encode_message(message, self._wire_cache))
        return True

    def flush(self) -> int:
        """Send what the last tick queued, one frame per peer; return the number of frames."""
        outbox, self._outbox = self._outbox, {}
        self._wire_cache.clear()
        for key, messages in outbox.items():
            self._link.send(key, encode_frame(messages))
        return len(outbox)

    def destroy(self) -> None:
        self._outbox.clear()

    # link -> transport
    def _announce_up(self, key: bytes) -> None:
        if key in self._voters:
            self._onNodeConnected(self._voters[key])
        else:
            node = self._readonly.setdefault(key, Node(node_id(key)))
            self._onReadonlyNodeConnected(node)

    def link_up(self, peer: bytes) -> None:
        if peer == self._self_key or peer in self._up:
            return
        self._up.add(peer)
        self._announce_up(peer)

    def link_down(self, peer: bytes) -> None:
        if peer not in self._up:
            return
        self._up.discard(peer)
        self._outbox.pop(peer, None)
        if peer in self._voters:
            self._onNodeDisconnected(self._voters[peer])
        elif peer in self._readonly:
            self._onReadonlyNodeDisconnected(self._readonly.pop(peer))

    def link_message(self, peer: bytes, frame: bytes) -> None:
        try:
            messages = decode_frame(frame)
        except RemoteProtocolError as exc:
            self.dropped_frames += 1
            logger.warning("dropped a Raft frame from %s: %s", peer.hex()[:12], exc)
            return
        if peer not in self._up:
            self.link_up(peer)
        node = self._voters.get(peer)
        if node is None:
            node = self._readonly.get(peer)
            if node is None:
                return
            # A device outside the Raft configuration may ack appends and forward writes,
            # nothing else: it can neither start nor win an election, nor act as a leader.
            refused = [m for m in messages if m["type"] not in READONLY_MAY_SEND]
            if refused:
                self.dropped_messages += len(refused)
                logger.warning("dropped %d %s message(s) from non-voter %s", len(refused),
                               refused[0]["type"], peer.hex()[:12])
                messages = [m for m in messages if m["type"] in READONLY_MAY_SEND]
        acks_only = True
        for message in messages:
            acks_only = acks_only and message["type"] == "next_node_idx"
            self._onMessageReceived(node, message)
        self.last_frame_acks_only = acks_only
        self.on_activity()
