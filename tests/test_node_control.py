"""The node's control channel in-process: frame decoding fuzzed, answers for every bad input, ForwardingRefs."""
from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcloud import control, errors


async def _echo(req: dict) -> dict:
    return {"echo": req.get("x")}


async def _boom(req: dict) -> dict:
    raise errors.NotFound("no such thing")


def _server(tmp: Path) -> control.ControlServer:
    return control.ControlServer(tmp, {"echo": _echo, "boom": _boom, "args": lambda r: _echo({"x": r["need"]})})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_frame_body_gets_an_answer_never_an_exception(body: bytes) -> None:
    server = _server(Path("/nonexistent"))
    answer = asyncio.run(server._answer(body))
    assert isinstance(answer, dict) and "ok" in answer
    if not answer["ok"]:
        assert answer["error"] and answer["message"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=20)), max_size=5))
def test_any_json_object_gets_an_answer(obj: dict) -> None:
    import json
    answer = asyncio.run(_server(Path("/nonexistent"))._answer(json.dumps(obj).encode()))
    assert answer["ok"] is (obj.get("op") == "echo")


def test_socket_round_trip_errors_and_limits(tmp_path: Path) -> None:
    async def main() -> None:
        server = _server(tmp_path)
        await server.start()
        try:
            def client_side() -> None:
                c = control.ControlClient(control.socket_path(tmp_path)).connect()
                assert c.call("echo", x=5)["echo"] == 5
                with pytest.raises(control.ControlError, match="NotFound: no such thing"):
                    c.call("boom")
                with pytest.raises(control.ControlError, match="unknown control op"):
                    c.call("nope")
                with pytest.raises(control.ControlError, match="bad arguments"):
                    c.call("args")
                with pytest.raises(control.ControlError, match="exceeds"):
                    c.call("echo", x="y" * (control.MAX_FRAME + 1))
                assert c.call("echo", x="still fine")["echo"] == "still fine"
                c.close()
            await asyncio.get_running_loop().run_in_executor(None, client_side)
            # a second server on the same vault refuses to start while the first answers
            with pytest.raises(control.ControlError, match="already runs"):
                await _server(tmp_path).start()
        finally:
            await server.close()
        assert not control.socket_path(tmp_path).exists()
        assert control.node_client(tmp_path) is None
    asyncio.run(main())


def test_stale_socket_of_a_killed_node_is_replaced(tmp_path: Path) -> None:
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(control.socket_path(tmp_path)))
    s.close()                                   # the file stays, nobody listens: a killed node's leftover
    assert control.node_client(tmp_path) is None

    async def main() -> None:
        server = _server(tmp_path)
        await server.start()
        await server.close()
    asyncio.run(main())


class _Local:
    def __init__(self) -> None:
        self.refs: dict[str, bytes] = {}

    def get(self, name: str):
        return self.refs.get(name)

    def list(self):
        return dict(self.refs)

    def cas(self, name, expected, new):
        if self.refs.get(name) != expected:
            return False
        if new is None:
            self.refs.pop(name, None)
        else:
            self.refs[name] = new
        return True


def test_forwarding_refs_send_only_main_to_the_node() -> None:
    local, calls, flushed = _Local(), [], []
    answers = iter([{"ok": True, "diverted": None}, {"ok": True, "diverted": "local/abcd"}, {"ok": False}])
    refs = control.ForwardingRefs(local, lambda e, n: (calls.append((e, n)), next(answers))[1],
                                  lambda: flushed.append(1))
    a, b = b"a" * 32, b"b" * 32
    assert refs.cas("side", None, a) and local.get("side") == a and not calls
    assert refs.cas("main", None, a) and calls == [(None, a)] and flushed == [1]
    assert local.get("main") is None            # the node mirrors main, not the caller
    assert refs.cas("main", a, b) and refs.diverted == ["local/abcd"]
    assert refs.cas("main", a, b) is False
    with pytest.raises(errors.BadArgument):
        refs.cas("main", a, None)


def test_frame_encoding_limit() -> None:
    with pytest.raises(control.ControlError):
        control.encode_frame({"x": "y" * control.MAX_FRAME})
    data = control.encode_frame({"op": "ping"})
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4


def test_node_config_from_file_data() -> None:
    from pcloud.node import NodeConfig
    cfg = NodeConfig.from_json({"listen": "127.0.0.1:4433", "relays": ["127.0.0.1:3478"],
                                "raft": {"election_timeout": [0.2, 0.4], "fsync": False}, "quorum_timeout": 1.5})
    assert cfg.raft.election_timeout == (0.2, 0.4) and cfg.raft.fsync is False and cfg.quorum_timeout == 1.5
    with pytest.raises(errors.BadArgument, match="unknown node config keys: lisen"):
        NodeConfig.from_json({"lisen": "x"})


def test_serve_reads_a_toml_config(tmp_path: Path) -> None:
    import subprocess
    import sys
    from pcloud.vault import Vault
    Vault.create(tmp_path / "v", name="t").close()
    (tmp_path / "node.toml").write_text('listen = "nowhere"\n')
    p = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(tmp_path / "v"), "serve", "--config",
                        str(tmp_path / "node.toml")], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "HOST:PORT" in p.stderr and "nowhere" in p.stderr
