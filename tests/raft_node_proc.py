"""Run one Raft node in its own process, driven by JSON lines on stdin (tests, benchmarks).

Test and bench tooling, not part of the ``consensus`` layer (it lives in tests/ so the
layer ships only what a vault runs); bench/ scripts import it with tests/ on ``sys.path``.
Cluster set-up and the failover loop shared by tests and benches: ``raft_helpers``.

``python -m tests.raft_node_proc CONFIG_JSON`` (cwd = the repository) where the
config holds: ``seed`` (hex), ``keys`` (hex device keys of every node, index =
position), ``index``, ``ports``, ``hosts`` (optional, per node; default
127.0.0.1), ``reach`` (optional: ``{"relay": ["ip:port", ...], "scope": hex}``
to find paths with ``transport.pathmgr.Reachability``, LAN / punched /
relayed), ``link`` ('tcp' for the TCP loopback link, 'quic' for transport
sessions), ``dir``, ``voters`` (initial voter indexes), ``genesis`` (hex of the
encoded Genesis) and optional ``raft`` (RaftConfig fields).

Each stdin line is ``{"id": n, "op": ..., ...}``; each answer is one stdout line
``{"id": n, ...}``. Ops: ``status``; ``exec`` (sign and submit a command given
as ``{"type": "cas"|"admit"|"revoke"|"trust"|"voter"|"policy"|"sealkey"|"rotate", ...}``
with hex bytes); ``submit`` (raw signed bytes, hex); ``block``/``unblock``
(peer indexes); ``cas_loop`` (a load generator: ``n`` sequential CAS per
worker, ``workers`` concurrent branches, returns latencies). The process
prints ``{"ready": true}`` once started. Addresses are loopback unless ``hosts``
names netlab namespace addresses (``NodeClient(argv_prefix=[netlab, "exec", HOST])``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from consensus.commands import (AdmitDevice, CasHead, Command, Genesis, PutSealedKey, Revoke, RotateEpoch,
                                SeedSigner, SetPolicy, SetTrust, SetVoter)
from consensus.errors import ConsensusError
from consensus.raft import RaftConfig, RaftNode

HOST = "127.0.0.1"


def _b(v: str | None) -> bytes | None:
    return None if v is None else bytes.fromhex(v)


def build_command(spec: dict[str, Any]) -> Command:
    kind = spec["type"]
    if kind == "cas":
        return CasHead(spec["branch"], _b(spec.get("expected")), _b(spec["new"]))
    if kind == "admit":
        return AdmitDevice(_b(spec["device"]), spec["name"], spec["trust"], bool(spec["voter"]))
    if kind == "revoke":
        return Revoke(_b(spec["device"]))
    if kind == "trust":
        return SetTrust(_b(spec["device"]), spec["trust"])
    if kind == "voter":
        return SetVoter(_b(spec["device"]), bool(spec["voter"]))
    if kind == "sealkey":
        return PutSealedKey(int(spec["epoch"]), _b(spec["device"]), _b(spec["sealed"]))
    if kind == "policy":
        return SetPolicy(_b(spec["device"]), spec["policy"])
    if kind == "rotate":
        return RotateEpoch(int(spec["epoch"]))
    raise ValueError(f"unknown command type {kind!r}")


def _result(result: Any) -> dict[str, Any]:
    return {"code": result.code, "reason": result.reason, "head": result.head.hex() if result.head else None}


class Proc:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.keys = [bytes.fromhex(k) for k in cfg["keys"]]
        self.index = cfg["index"]
        self.signer = SeedSigner(bytes.fromhex(cfg["seed"]))
        self.link: Any = None
        self.node: RaftNode | None = None
        self.endpoint: Any = None
        self.reach: Any = None

    async def start(self) -> None:
        ports = self.cfg["ports"]
        hosts = self.cfg.get("hosts") or [HOST] * len(self.keys)
        me = self.keys[self.index]
        peers = {k: (hosts[i], ports[i]) for i, k in enumerate(self.keys) if k != me}
        if self.cfg["link"] == "tcp":
            from consensus.tcp_link import TcpLink
            self.link = TcpLink(self.signer, hosts[self.index], ports[self.index], peers)
            await self.link.start()
        else:
            from consensus.session_link import SessionLink
            from transport.endpoint import Endpoint
            allowed = set(self.keys)
            reach = self.cfg.get("reach")
            bind = "0.0.0.0" if reach else hosts[self.index]
            self.endpoint = await Endpoint.start(bind, ports[self.index], bytes.fromhex(self.cfg["seed"]),
                                                 admit=lambda key: key in allowed)
            self.link = SessionLink(self.endpoint)
            if reach:
                # Paths found by the transport's path manager: LAN (mDNS), punched, or relayed.
                from transport.pathmgr import Reachability
                relay = [(h, int(p)) for h, p in (a.rsplit(":", 1) for a in reach["relay"])]
                self.reach = Reachability(self.endpoint, [k for k in self.keys if k != me], relay=relay,
                                          relay_scope=bytes.fromhex(reach["scope"]), vault_tag=None,
                                          punch=reach.get("punch", True), mdns_interfaces=("127.0.0.1",))
                await self.reach.start()
            else:
                for key, addr in peers.items():
                    self.endpoint.keep(key, [addr])
        raft_cfg = RaftConfig(**self.cfg.get("raft", {}))
        if "election_timeout" in self.cfg.get("raft", {}):
            raft_cfg.election_timeout = tuple(raft_cfg.election_timeout)
        self.node = RaftNode(self.link, local=me, genesis=Genesis.decode(bytes.fromhex(self.cfg["genesis"])),
                             voters=[self.keys[i] for i in self.cfg["voters"]], directory=Path(self.cfg["dir"]),
                             config=raft_cfg, signer=self.signer)
        await self.node.start()

    async def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req["op"]
        node = self.node
        assert node is not None
        try:
            if op == "status":
                return node.status() | {"heads": {b: h.hex() for b, h in node.state.heads.items()},
                                        "epoch": node.state.epoch}
            if op == "exec":
                return _result(await node.execute(build_command(req["cmd"]), req.get("timeout")))
            if op == "submit":
                return _result(await node.submit(bytes.fromhex(req["data"]), req.get("timeout")))
            if op == "sign":
                return {"data": node.sign(build_command(req["cmd"])).encode().hex()}
            if op in ("block", "unblock"):
                for i in req["peers"]:
                    getattr(self.link, op)(self.keys[i])
                return {"ok": True}
            if op == "cas_loop":
                return await self.cas_loop(req)
            if op == "paths":
                return {"paths": [[s.id.hex() if isinstance(s.id, bytes) else str(s.id), s.path]
                                  for s in self.reach.status()] if self.reach else []}
        except ConsensusError as exc:
            return {"error": type(exc).__name__, "message": str(exc)}
        return {"error": "BadOp", "message": op}

    async def cas_loop(self, req: dict[str, Any]) -> dict[str, Any]:
        node = self.node
        assert node is not None
        latencies: list[float] = []
        errors = 0

        async def worker(w: int) -> None:
            nonlocal errors
            branch = f"{req.get('prefix', 'bench')}-{self.index}-{w}"
            head = node.state.find_head(branch)
            for i in range(req["n"]):
                new = i.to_bytes(8, "big") + w.to_bytes(4, "big")
                t0 = time.perf_counter()
                try:
                    result = await node.execute(CasHead(branch, head, new), req.get("timeout", 5.0))
                except ConsensusError:
                    errors += 1
                    head = node.state.find_head(branch)
                    continue
                latencies.append(time.perf_counter() - t0)
                head = result.head          # ours if we won, the current head if we lost

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(req.get("workers", 1))))
        return {"elapsed": time.perf_counter() - start, "latencies": latencies, "errors": errors}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        print(json.dumps({"ready": True}), flush=True)
        tasks: set[asyncio.Task] = set()
        while True:
            line = await reader.readline()
            if not line:
                break
            req = json.loads(line)

            async def run(req: dict[str, Any] = req) -> None:
                answer = await self.handle(req)
                sys.stdout.write(json.dumps({"id": req.get("id")} | answer) + "\n")
                sys.stdout.flush()

            task = loop.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if self.node is not None:
            await self.node.close()
        if self.reach is not None:
            await self.reach.close()
        if self.endpoint is not None:
            await self.endpoint.close()
        elif self.link is not None:
            await self.link.close()


class NodeClient:
    """The parent's handle on one node process: ``await call(op, ...)``, ``kill()`` (SIGKILL)."""

    def __init__(self, cfg: dict[str, Any], log_path: Path, argv_prefix: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log_path = log_path
        self.argv_prefix = argv_prefix or []
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = 0
        self._waiting: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    @property
    def key(self) -> bytes:
        return bytes.fromhex(self.cfg["keys"][self.cfg["index"]])

    async def start(self) -> None:
        repo = Path(__file__).resolve().parent.parent
        log = open(self.log_path, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv_prefix, sys.executable, "-m", "tests.raft_node_proc", json.dumps(self.cfg), cwd=str(repo),
            env=self.env,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, limit=64 * 1024 * 1024)
        log.close()
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not line.startswith(b'{"ready"'):
            raise RuntimeError(f"node {self.cfg['index']} did not start: {line!r} (see {self.log_path})")
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            answer = json.loads(line)
            fut = self._waiting.pop(answer.pop("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(answer)
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(f"node {self.cfg['index']} exited"))
        self._waiting.clear()

    async def call(self, op: str, rpc_timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        fut = asyncio.get_running_loop().create_future()
        self._waiting[self._ids] = fut
        self.proc.stdin.write((json.dumps({"id": self._ids, "op": op} | kw) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, rpc_timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs in the node."""
        if self.alive():
            self.proc.kill()
            await self.proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def stop(self) -> None:
        """Close stdin (the node closes cleanly); kill after a grace period."""
        if self.alive():
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except asyncio.TimeoutError:
                pass
        await self.kill()


def cluster_configs(base: Path, n: int, voters: list[int], link: str, ports: list[int],
                    raft: dict[str, Any] | None = None, hosts: list[str] | None = None) -> list[dict[str, Any]]:
    """Configs for ``n`` nodes with fixed test seeds; node 0 is the genesis owner."""
    seeds = [bytes([0x40 + i]) * 32 for i in range(n)]
    signers = [SeedSigner(s) for s in seeds]
    genesis = Genesis.create(signers[0], b"test-vault", "node0", 1)
    return [{"index": i, "seed": seeds[i].hex(), "keys": [s.public_key.hex() for s in signers], "ports": ports,
             "link": link, "dir": str(base / f"node{i}"), "voters": voters, "genesis": genesis.encode().hex(),
             "raft": raft or {}, "hosts": hosts} for i in range(n)]


async def _main(cfg: dict[str, Any]) -> None:
    proc = Proc(cfg)
    await proc.start()
    await proc.serve()


if __name__ == "__main__":
    logging.basicConfig(level=logging.DEBUG if os.environ.get("PCLOUD_RAFT_DEBUG") else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s node{json.loads(sys.argv[1])['index']} %(name)s %(levelname)s %(message)s")
    import faulthandler
    import signal
    faulthandler.register(signal.SIGUSR1)      # `kill -USR1 pid` dumps every thread's stack to the log
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    profile_to = os.environ.get("PCLOUD_PROFILE")     # benchmarks: where does a node spend its CPU?
    if profile_to:
        import cProfile
        cProfile.run("asyncio.run(_main(json.loads(sys.argv[1])))", f"{profile_to}.{json.loads(sys.argv[1])['index']}")
    else:
        asyncio.run(_main(json.loads(sys.argv[1])))
