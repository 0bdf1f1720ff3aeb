"""Nothing from the network reaches an unrestricted unpickler: rogue frames, entries and pickles."""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import socket
from pathlib import Path

import msgpack
import pysyncobj.journal
import pysyncobj.pickle
import pytest

from consensus import safe_pickle
from consensus.commands import Genesis, SeedSigner
from consensus.errors import UnsafePayload
from consensus.raft import RaftConfig, RaftNode
from consensus.raft_transport import decode_frame, encode_frame, encode_message
from consensus.tcp_link import TcpLink
from transport.errors import RemoteProtocolError


class Evil:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_and_logs(tmp_path, caplog):
    sentinel = tmp_path / "pwned"
    evil = pickle.dumps(Evil(str(sentinel)), 2)
    assert safe_pickle.installed()
    assert pysyncobj.pickle.loads is safe_pickle.loads and pysyncobj.journal.loads is safe_pickle.loads
    with caplog.at_level(logging.ERROR, logger="consensus.safe_pickle"):
        with pytest.raises(UnsafePayload, match="posix.system|os.system|not admitted"):
            pysyncobj.pickle.loads(evil)
    assert "unsafe pickle" in caplog.text
    assert not sentinel.exists()
    with pytest.raises(UnsafePayload):                       # bytes-to-bytes codecs are refused too
        safe_pickle.loads(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x0a\x00\x00\x00zlib_codecq\x00\x86R.")
    with pytest.raises(UnsafePayload):
        safe_pickle.loads(b"\x80\x02garbage")
    # What pysyncobj pickles itself still loads.
    from pysyncobj.node import Node
    assert safe_pickle.loads(pickle.dumps((0, (b"abc",)), 2)) == (0, (b"abc",))
    assert safe_pickle.loads(pickle.dumps(["add", "ab", Node("ab")], 2))[2] == Node("ab")


def test_frame_decoder_refuses_pickles_and_unknown_shapes():
    evil = pickle.dumps(Evil("/tmp/never"), 2)
    bad_frames = [
        evil,
        msgpack.packb([{"type": "request_vote", "term": 1}]),                           # missing fields
        msgpack.packb([{"type": "request_vote", "term": 1, "last_log_index": 1, "last_log_term": 1, "x": 1}]),
        msgpack.packb([{"type": "append_entries", "term": 1, "commit_index": 1, "transmission": "start",
                        "data": evil}]),                                                # chunked pickle path
        msgpack.packb([{"type": "apply_command", "command": [2, "add", "not-a-node"]}]),
        msgpack.packb([{"type": "apply_command", "command": [3, evil]}]),
        msgpack.packb([{"type": "append_entries", "term": 1, "commit_index": 1, "entries": [[[9, evil], 1, 1]]}]),
        msgpack.packb({"type": "timeout_now", "term": 1}),
        b"\xc1",
    ]
    for frame in bad_frames:
        with pytest.raises(RemoteProtocolError):
            decode_frame(frame)
    # Encoding refuses what it cannot express without pickle.
    with pytest.raises(ValueError):
        encode_message({"type": "append_entries", "transmission": "start", "data": b"x", "term": 1,
                        "commit_index": 1})


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class _Sink:
    def __init__(self) -> None:
        self.up: set[bytes] = set()

    def link_up(self, peer: bytes) -> None:
        self.up.add(peer)

    def link_down(self, peer: bytes) -> None:
        self.up.discard(peer)

    def link_message(self, peer: bytes, frame: bytes) -> None:
        pass


def test_rogue_peer_frames_and_entries_change_nothing(tmp_path: Path, caplog):
    """An enrolled but hostile peer sends a raw pickle, then an 'append_entries' whose entry is a pickle."""
    sentinel = tmp_path / "pwned"
    evil = pickle.dumps(Evil(str(sentinel)), 2)
    victim_s, rogue_s = SeedSigner(b"\x01" * 32), SeedSigner(b"\x02" * 32)
    genesis = Genesis.create(victim_s, b"vault", "victim", 1)

    async def scenario() -> None:
        pv, pr = _port(), _port()
        vlink = TcpLink(victim_s, "127.0.0.1", pv, {rogue_s.public_key: ("127.0.0.1", pr)})
        rlink = TcpLink(rogue_s, "127.0.0.1", pr, {victim_s.public_key: ("127.0.0.1", pv)})
        sink = _Sink()
        rlink.set_handler(sink)
        await vlink.start()
        await rlink.start()
        node = RaftNode(vlink, local=victim_s.public_key, genesis=genesis,
                        voters=[victim_s.public_key, rogue_s.public_key], directory=tmp_path / "raft",
                        config=RaftConfig(fsync=False), signer=victim_s)
        await node.start()
        for _ in range(100):
            if victim_s.public_key in sink.up:
                break
            await asyncio.sleep(0.05)
        assert victim_s.public_key in sink.up
        before = node.state.snapshot()
        rlink.send(victim_s.public_key, evil)                                     # a raw pickle as a frame
        rlink.send(victim_s.public_key, encode_frame([{                           # a pickle as a log entry
            "type": "append_entries", "term": 50, "commit_index": 2, "prevLogIdx": 1, "prevLogTerm": 0,
            "entries": [[[0, evil], 2, 50]]}]))
        rlink.send(victim_s.public_key, encode_frame([{                           # a pickle as a snapshot
            "type": "append_entries", "term": 50, "commit_index": 2, "serialized": [evil, True, True]}]))
        for _ in range(100):
            if node.state.applied >= 1 and node.status()["dropped_frames"] >= 1:
                break
            await asyncio.sleep(0.05)
        status = node.status()
        assert status["dropped_frames"] >= 1
        assert node.state.applied >= 1                  # the rogue entry was applied as data ...
        after = msgpack.unpackb(node.state.snapshot())
        assert after[4:7] == msgpack.unpackb(before)[4:7]   # ... and changed no device, key or head
        assert node.state.find_head("main") is None
        await node.close()
        await rlink.close()
        await vlink.close()

    with caplog.at_level(logging.WARNING):
        asyncio.run(scenario())
    assert not sentinel.exists()
    assert "dropped a Raft frame" in caplog.text
    assert "log entry refused" in caplog.text


# ---------------------------------------------------------------- fuzzing the Raft frame decoder

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=40),
                  st.text(max_size=70), st.sampled_from(["add", "rem", "a" * 64]))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
_message = st.builds(
    lambda t, fields: {"type": t, **fields},
    st.sampled_from(["request_vote", "response_vote", "timeout_now", "append_entries", "next_node_idx",
                     "apply_command", "apply_command_response", "other"]),
    st.dictionaries(st.sampled_from(["term", "commit_index", "entries", "prevLogIdx", "prevLogTerm", "serialized",
                                     "next_node_idx", "reset", "success", "command", "request_id", "error",
                                     "log_idx", "log_term", "last_log_index", "last_log_term", "zzz"]),
                    _value, max_size=6))


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_decode_frame_bytes(data):
    try:
        decode_frame(data)
    except RemoteProtocolError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.lists(_message, max_size=3))
def test_fuzz_decode_frame_structured(messages):
    frame = msgpack.packb(messages, use_bin_type=True)
    try:
        decoded = decode_frame(frame)
    except RemoteProtocolError:
        return
    # Whatever passes the schema re-encodes (nothing the decoder lets through is unusable).
    encode_frame(encode_message(m) for m in decoded)
