"""The local control channel between a running node (`pcloud serve` / `pcloud relay`) and the CLI/API.

Wire format
-----------
A Unix stream socket ``node.sock`` in the vault directory, mode 0600 (only
this user). One connection carries any number of request/response pairs,
each a frame: a 4-byte big-endian length, then a JSON object. Requests are
``{"op": str, ...args}``; answers are ``{"ok": true, ...}`` or
``{"ok": false, "error": ErrorClassName, "message": str}``. Bytes travel as
hex strings. Frames are bounded (``MAX_FRAME``); an oversized, truncated or
non-JSON frame, a frame that is not an object, or an unknown op gets an error
answer (when the stream can still carry one) and never stops the server.

Seam (what goes through the socket)
-----------------------------------
The CLI/API process keeps reading and writing objects in the store directly:
the store is multi-process safe (SQLite WAL + a writer flock, see
``pcloud.store.objectstore``). Only two things go to the node:

* moving ``main``: `ForwardingRefs` is a `Refs` whose ``cas("main", ...)``
  asks the node (which runs it through Raft and mirrors the result into the
  local ref table before answering), while every other branch and every read
  stays on the local ref table;
* node-only requests: ``status``, ``devices``, ``admit`` (and whatever the
  membership service registers).

A vault opened while no node runs uses its local ref table as before, so the
commands behave the same either way. `node_client(vault_dir)` says which case
holds (a socket file whose node died is treated as "not running").
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import struct
from pathlib import Path
from typing import Any, Awaitable, Callable

from . import errors
from .store.objects import ObjectId

log = logging.getLogger("pcloud.control")

SOCKET_NAME = "node.sock"
MAX_FRAME = 1 << 20
"""Largest request or answer (bytes of JSON)."""
_HEADER = struct.Struct(">I")

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(vault_dir: str | os.PathLike[str]) -> Path:
    return Path(vault_dir) / SOCKET_NAME


class ControlError(errors.PcloudError):
    """The node answered a control request with an error, or the channel broke."""


def encode_frame(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ControlError(f"control frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(data)) + data


def decode_body(data: bytes) -> dict[str, Any]:
    """Parse one frame body; ValueError if it is not a JSON object."""
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("a control frame must be a JSON object")
    return obj


# ------------------------------------------------------------------ server


class ControlServer:
    """Serves ``handlers[op](request) -> answer`` on the vault's socket (asyncio).

        server = ControlServer(vault_dir, {"status": node.status_json})
        await server.start(); ...; await server.close()
    """

    def __init__(self, vault_dir: str | os.PathLike[str], handlers: dict[str, Handler]) -> None:
        self.path = socket_path(vault_dir)
        self.handlers = handlers
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.bad_requests = 0

    async def start(self) -> None:
        if self.path.exists():
            if _alive(self.path):
                raise ControlError(f"a node already runs on this vault ({self.path})")
            self.path.unlink()           # left by a node that was killed
        old = os.umask(0o177)            # the socket is created 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_FRAME + 4)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            self._server = None
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while True:
                try:
                    header = await reader.readexactly(_HEADER.size)
                except asyncio.IncompleteReadError:
                    return                                  # client closed
                (size,) = _HEADER.unpack(header)
                if size > MAX_FRAME:
                    self.bad_requests += 1
                    # The rest of the stream cannot be framed any more: answer, then hang up.
                    writer.write(encode_frame(_error("BadRequest", f"frame of {size} bytes exceeds {MAX_FRAME}")))
                    await writer.drain()
                    return
                try:
                    body = await reader.readexactly(size)
                except asyncio.IncompleteReadError:
                    self.bad_requests += 1
                    return
                answer = await self._answer(body)
                writer.write(encode_frame(answer))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._conns.discard(task)
            writer.close()

    async def _answer(self, body: bytes) -> dict[str, Any]:
        try:
            req = decode_body(body)
        except (ValueError, UnicodeDecodeError) as exc:
            self.bad_requests += 1
            return _error("BadRequest", f"malformed control request: {exc}")
        op = req.get("op")
        handler = self.handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            self.bad_requests += 1
            return _error("BadRequest", f"unknown control op {op!r}")
        try:
            answer = await handler(req)
        except (errors.PcloudError, errors.ConsensusError, errors.ReplicationError, errors.TransportError) as exc:
            return _error(type(exc).__name__, str(exc))
        except (KeyError, TypeError, ValueError) as exc:
            # a request with missing or mistyped fields: the caller's mistake, answered, never fatal
            self.bad_requests += 1
            return _error("BadRequest", f"bad arguments for {op!r}: {exc!r}")
        try:
            encode_frame(answer)
        except (TypeError, ValueError, ControlError) as exc:
            log.error("control op %s produced an unencodable answer: %s", op, exc)
            return _error("ControlError", f"answer of {op!r} could not be encoded")
        return {"ok": True} | answer


def _error(name: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": name, "message": message}


def _alive(path: Path) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ------------------------------------------------------------------ client


class ControlClient:
    """Blocking client (the CLI and the sync API): ``call(op, **args) -> answer``."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock: socket.socket | None = None

    def connect(self) -> "ControlClient":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except OSError as exc:
            s.close()
            raise ControlError(f"no node answers on {self.path}: {exc}") from exc
        self._sock = s
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request; return the answer, or raise ControlError with the node's reason."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        try:
            self._sock.sendall(encode_frame({"op": op} | args))
            (size,) = _HEADER.unpack(_recv_exactly(self._sock, _HEADER.size))
            if size > MAX_FRAME:
                raise ControlError(f"the node sent a {size}-byte frame (limit {MAX_FRAME})")
            answer = decode_body(_recv_exactly(self._sock, size))
        except (OSError, ValueError) as exc:
            self.close()
            raise ControlError(f"control channel to the node failed during {op!r}: {exc}") from exc
        if not answer.get("ok"):
            raise ControlError(f"node refused {op!r}: {answer.get('error')}: {answer.get('message')}")
        return answer


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(n - len(buf))
        if not part:
            raise ConnectionError("the node closed the control channel")
        buf += part
    return bytes(buf)


def node_client(vault_dir: str | os.PathLike[str], timeout: float = 30.0) -> ControlClient | None:
    """A connected client if a node runs on ``vault_dir``, else None."""
    path = socket_path(vault_dir)
    if not path.exists():
        return None
    try:
        return ControlClient(path, timeout).connect()
    except ControlError:
        return None                      # a stale socket of a killed node


# ------------------------------------------------------------------ refs


CasMain = Callable[[ObjectId | None, ObjectId], dict[str, Any]]
"""``cas_main(expected, new) -> {"ok": bool, "diverted": branch-or-None}``"""


class ForwardingRefs:
    """A `Refs` that moves ``main`` through the node (Raft) and everything else locally.

    ``local`` is the store's RefStore (reads always come from it: the node
    mirrors Raft's ``main`` there before answering a CAS). ``flush`` makes
    the objects written so far visible to other processes before the node is
    asked to point ``main`` at them. When the node had no Raft quorum it keeps
    the commit on this device's local branch and says so: the CAS reports
    success (the commit is safe) and ``diverted`` names the branch, for the
    caller to tell the user.
    """

    def __init__(self, local: Any, cas_main: CasMain, flush: Callable[[], None]) -> None:
        self.local = local
        self._cas_main = cas_main
        self._flush = flush
        self.diverted: list[str] = []

    def get(self, name: str) -> ObjectId | None:
        return self.local.get(name)

    def list(self) -> dict[str, ObjectId]:
        return self.local.list()

    def cas(self, name: str, expected: ObjectId | None, new: ObjectId | None) -> bool:
        if name != "main":
            return self.local.cas(name, expected, new)
        if new is None:
            raise errors.BadArgument("main cannot be deleted")
        self._flush()
        answer = self._cas_main(expected, new)
        if answer.get("diverted"):
            self.diverted.append(answer["diverted"])
        return bool(answer.get("ok"))


def client_cas_main(client: ControlClient) -> CasMain:
    def cas(expected: ObjectId | None, new: ObjectId) -> dict[str, Any]:
        return client.call("cas_main", expected=expected.hex() if expected else None, new=new.hex())
    return cas
