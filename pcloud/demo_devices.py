"""The three-device part of `pcloud demo`: laptop, phone and cloud node as real processes on loopback.

Every step checks what it narrates (a file that did not arrive, or a cloud
directory holding plaintext, raises and ends the demo with an error); the
milestone lines it prints start with a check mark so tests can follow them.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.rule import Rule

from . import errors
from .nodeproc import NodeProc, free_port, invite, join, wait_for
from .vault import Vault

MARKER = b"PCLOUD-DEMO-SECRET-7f3a"


def _step(out: Console, title: str) -> None:
    out.print()
    out.print(Rule(f"[bold]{title}[/]", align="left"))


def _ok(out: Console, text: str) -> None:
    out.print(f"[green]✓[/] {text}")


def _with_vault(d: Path, fn: Any) -> Any:
    v = Vault.open(d)
    try:
        return fn(v)
    finally:
        v.close()


def three_devices(out: Console, base: Path) -> None:
    relay = f"127.0.0.1:{free_port()}"
    nodes: dict[str, NodeProc] = {}
    t0 = time.monotonic()

    def since() -> str:
        return f"[dim]({time.monotonic() - t0:.1f} s)[/]"

    try:
        _step(out, "1. Three devices on this machine (separate processes, QUIC on 127.0.0.1 only)")
        Vault.create(base / "laptop", name="laptop").close()
        nodes["laptop"] = NodeProc("laptop", base / "laptop", ["serve", "--relay", relay], base).start()
        wait_for("the laptop's node to lead its one-device vault",
                 lambda: nodes["laptop"].status()["raft"]["role"] == "leader")
        _ok(out, f"laptop {nodes['laptop'].device_id}: new vault, its node runs (Raft leader of 1) {since()}")
        laptop_addr = nodes["laptop"].info["address"]
        code = invite(nodes["laptop"], trust="storage", voter=True)
        _ok(out, f"laptop invites the cloud node: code [bold]{code}[/] (one-time, expires in 2 min)")
        nodes["cloud"] = NodeProc("cloud", base / "cloud", ["relay", "--join", code, "--via", laptop_addr,
                                                            "--listen", relay], base).start()
        _ok(out, f"cloud node {nodes['cloud'].device_id} joined as [cyan]storage[/] (no vault key), "
                 f"relay on {relay} {since()}")
        code = invite(nodes["laptop"], trust="member", voter=True)
        joined = join(code, base / "phone", "phone", laptop_addr, base)
        _ok(out, f"phone joined with code [bold]{code}[/] as [cyan]{joined['trust']}[/] "
                 f"(SPAKE2: the code never crossed the wire) {since()}")
        nodes["phone"] = NodeProc("phone", base / "phone", ["serve", "--relay", relay], base).start()
        out.print("[dim]with three devices all three vote in Raft, so any one of them may fail[/]")

        def all_voting() -> bool:
            st = nodes["laptop"].status()
            return len(st["peers"]) == 2 and all(p["path"] for p in st["peers"]) and \
                nodes["phone"].status()["raft"]["role"] == "follower" and \
                nodes["cloud"].status()["raft"]["role"] == "follower"
        wait_for("all three devices connected and voting", all_voting, 30)
        for p in nodes["laptop"].status()["peers"]:
            out.print(f"  laptop -> {p['name']:<6} path [cyan]{p['path']}[/] {p['addr']}  rtt {p['rtt_ms']} ms")
        _ok(out, f"three devices connected; Raft has three voters, leader "
                 f"{nodes['laptop'].status()['raft']['leader']} {since()}")

        _step(out, "2. Files and a document written on the laptop")
        t_write = time.monotonic()

        def write(v: Vault) -> str:
            with v.commit("holiday plans") as tx:
                tx.write("Documents/plan.txt", b"Day 1: Lisbon\n" + MARKER + b"\n")
                tx.write("Documents/budget.csv", b"item,eur\ntrain,80\nhotel,300\n")
                tx.write("Photos/beach.jpg", os_random(2 << 20))
            with v.doc("Documents/packing.doc") as d:
                d.insert_text(0, "passport\n")
            return v.resolve("main").hex()
        head = _with_vault(base / "laptop", write)
        _ok(out, f"laptop committed 3 files and a document: main = [yellow]{head[:12]}[/]")

        _step(out, "3. They arrive on the phone and on the cloud node")
        wait_for("the phone to reach the laptop's main", lambda: nodes["phone"].status()["main"] == head, 20)
        got = _with_vault(base / "phone", lambda v: (v.read("Documents/plan.txt"),
                                                     str(v.doc("Documents/packing.doc").text())))
        if MARKER not in got[0] or "passport" not in got[1]:
            raise errors.IntegrityError("the phone's copy differs from the laptop's")
        _ok(out, f"phone has main {head[:12]} {time.monotonic() - t_write:.2f} s after the write; "
                 f"plan.txt and packing.doc read back on the phone")
        wait_for("the cloud node to archive main", lambda: nodes["cloud"].status()["main"] == head, 20)
        hits = [p for p in (base / "cloud").rglob("*") if p.is_file() and MARKER in p.read_bytes()]
        size = sum(p.stat().st_size for p in (base / "cloud" / "store").rglob("*") if p.is_file())
        if hits:
            raise errors.IntegrityError(f"plaintext marker found on the cloud node: {hits}")
        has_key = (base / "cloud" / "keyring.sealed").exists()
        _ok(out, f"cloud node archived main ({size:,} bytes of sealed objects); files containing the marker: "
                 f"{len(hits)}; it holds a vault key: {has_key}")

        _step(out, "4. The same document edited on the laptop and the phone at the same moment")
        start = threading.Barrier(2)
        failures: list[BaseException] = []

        def edit(dev: str, line: str) -> None:
            try:
                v = Vault.open(base / dev)
                try:
                    d = v.doc("Documents/packing.doc")
                    d.append_text(line)
                    start.wait(5)
                    d.save(f"{dev}: packing")
                finally:
                    v.close()
            except BaseException as exc:  # reported below: a demo thread must not die silently
                failures.append(exc)
        threads = [threading.Thread(target=edit, args=("laptop", "sunscreen\n")),
                   threading.Thread(target=edit, args=("phone", "charger\n"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise failures[0]

        def converged() -> str | None:
            sa, sb = nodes["laptop"].status(), nodes["phone"].status()
            # A save that lost the race waits on the device's local branch until it is merged into
            # main; only then have both edits landed in main (live document updates may show both
            # edits on both devices earlier).
            if sa["main"] != sb["main"] or sa["local_branch"] or sb["local_branch"]:
                return None
            text = _with_vault(base / "phone", lambda v: str(v.doc("Documents/packing.doc").text()))
            return text if "sunscreen" in text and "charger" in text else None
        text = wait_for("both edits on both devices", converged, 20)
        _ok(out, "both devices hold the merged document (one CAS won, the other's save merged as a CRDT):")
        for line in text.splitlines():
            out.print(f"    {line}")

        _step(out, "5. Kill the Raft leader (SIGKILL) and keep working")
        leader_id = nodes["laptop"].status()["raft"]["leader"]
        leader = next(n for n in nodes.values() if n.device_id == leader_id)
        leader.kill()
        _ok(out, f"killed {leader.name} ({leader_id}), the leader")
        writer = "phone" if leader.name != "phone" else "laptop"
        other = next(n for n in nodes.values() if n.name not in (leader.name, writer))

        def new_leader() -> bool:
            r = nodes[writer].status()["raft"]
            return r["leader"] not in (None, leader_id)
        wait_for("a new leader", new_leader, 20)
        _ok(out, f"new leader {nodes[writer].status()['raft']['leader']} elected {since()}")

        def write2(v: Vault) -> tuple[str, list[str]]:
            r = v.write("Documents/after.txt", f"written on the {writer} while the {leader.name} is down\n")
            return r.commit or "", v.take_diverted()
        head2, diverted = _with_vault(base / writer, write2)
        if diverted:
            raise errors.ConflictError(f"the write went to {diverted} instead of main")
        def other_has_it() -> bool:
            main = nodes[writer].status()["main"]
            # main may already have moved past head2 (e.g. a pending merge of the writer's local
            # branch): what counts is that the other device holds a main that contains it.
            return other.status()["main"] == main and _with_vault(
                base / writer, lambda v: any(c.commit == head2 for c in v.log(64)))
        wait_for(f"{other.name} to get the new main", other_has_it, 20)
        _ok(out, f"{writer} committed {head2[:12]} to main through Raft (2 of 3 voters); {other.name} has it")

        head3 = nodes[writer].status()["main"]        # head2, or a main that has moved past it since
        leader.start()
        wait_for(f"{leader.name} to catch up", lambda: leader.status()["main"] == head3, 30)
        _ok(out, f"{leader.name} restarted and caught up to {head3[:12]} {since()}")
        if leader.name != "cloud":
            res = _with_vault(base / leader.name, lambda v: (v.read("Documents/after.txt"), v.fsck()))
            out.print(f"fsck on the {leader.name}: {res[1].objects} objects verified, ok={res[1].ok}")
        else:
            res = _with_vault(base / "laptop", lambda v: v.fsck())
            out.print(f"fsck on the laptop: {res.objects} objects verified, ok={res.ok}")

        _step(out, "6. Clean up")
        for n in nodes.values():
            code = n.stop()
            _ok(out, f"{n.name} stopped by SIGTERM (exit {code})")
    finally:
        for n in nodes.values():
            n.kill()


def os_random(n: int) -> bytes:
    import os
    return os.urandom(n)
