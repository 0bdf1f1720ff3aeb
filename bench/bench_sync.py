"""Two devices keeping a folder in sync on loopback: pcloud vs Syncthing vs a plain TCP copy (issue 5).

Run: .venv/bin/python bench/bench_sync.py [--rounds 3] [--samples 10] [--files 100000] [--no-syncthing] [--dry]
     .venv/bin/python bench/bench_sync.py --big-only [--rounds 5]   (while working on the 256 MiB case: only
     that sync, each round printed with its phases and each node's CPU seconds, page faults and disk
     bytes, Syncthing's too; nothing appended)
     With BENCH_PERF=FILE, `perf record -a -g` covers each pcloud 256 MiB sync (FILE is overwritten); with
     BENCH_PYSPY=PREFIX, py-spy samples the thread holding the GIL in node A and B, without pausing them,
     into PREFIX.a / PREFIX.b (raw format; `pip install py-spy`).

The initial syncs run --rounds times, pcloud and Syncthing alternating which goes
first, each pair started afresh and its directories deleted after it; the table
shows medians and the notes every round. (On this VM, writing into never-used
page cache costs several times more than into recycled pages, so a single run
favours whichever tool comes second.)

In one run, on the same generated data, device A -> device B over 127.0.0.1:
* initial sync of 1,000 files of 4-64 KiB (renamed into A's watched folder, until
  every file is on B's disk with its size);
* initial sync of one 256 MiB file (same);
  (also: each node's CPU seconds from the file's arrival in A's folder to its end on B, and the phases
  of pcloud's time read from the node logs);
* propagation of a 1 KiB file written into A's folder until readable on B
  (p50 / max over --samples);
* RSS of a pcloud node (`pcloud serve --folder`) holding a --files vault and the
  time from its start to the end of its first rescan of that unchanged folder.

pcloud: two `pcloud serve --folder` processes (A owns the vault, B enrolled).
Syncthing (Debian package; installed with apt-get if missing, else skipped
with a message): two instances, local/global discovery, relays and NAT off, the
folder shared over tcp://127.0.0.1 with default settings (watcher delay 10 s);
for the two initial syncs a rescan is requested through its REST API right
after the files land, so its watcher delay does not count there.
Baseline: a plain TCP copy of the same files (one connection, no checksums, no
fsync) between two processes.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import psutil  # noqa: E402

from common import append_results, table  # noqa: E402
from pcloud.nodeproc import NodeProc, enroll, free_port, wait_for  # noqa: E402
from pcloud.vault import Vault  # noqa: E402

MiB = 1 << 20


# ------------------------------------------------------------------ data


def make_small(stage: Path, n: int = 1000, seed: int = 7) -> list[tuple[str, int]]:
    import random
    rnd = random.Random(seed)
    stage.mkdir(parents=True)
    out = []
    for i in range(n):
        size = rnd.randint(4 * 1024, 64 * 1024)
        name = f"f{i:04d}.bin"
        (stage / name).write_bytes(os.urandom(size))
        out.append((name, size))
    return out


def make_big(stage: Path, size: int = 256 * MiB) -> list[tuple[str, int]]:
    stage.mkdir(parents=True)
    with open(stage / "big.bin", "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))
    return [("big.bin", size)]


def move_in(stage: Path, dest: Path) -> None:
    """Files appear in the watched folder at once (rename), not while being written."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(stage.iterdir()):
        os.rename(p, dest / p.name)


def all_there(dest: Path, files: list[tuple[str, int]]) -> bool:
    for name, size in files:
        try:
            if os.stat(dest / name).st_size != size:
                return False
        except FileNotFoundError:
            return False
    return True


def wait_files(dest: Path, files: list[tuple[str, int]], timeout: float) -> float:
    t0 = time.perf_counter()
    while not all_there(dest, files):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"{dest}: files did not arrive within {timeout}s")
        time.sleep(0.005)
    return time.perf_counter() - t0


def latency_samples(a: Path, b: Path, n: int, timeout: float) -> list[float]:
    out = []
    for i in range(n):
        payload = os.urandom(1024)
        name = f"lat{i:02d}-{time.time_ns()}.bin"
        tmp = a.parent / (name + ".tmp")
        tmp.write_bytes(payload)
        t0 = time.perf_counter()
        os.rename(tmp, a / name)
        while True:
            try:
                if (b / name).read_bytes() == payload:
                    break
            except FileNotFoundError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"1 KiB file {name} did not arrive within {timeout}s")
            time.sleep(0.002)
        out.append(time.perf_counter() - t0)
        time.sleep(0.3)
    return out


# ------------------------------------------------------------------ TCP baseline

RECEIVER = r"""
import os, socket, struct, sys
dest = sys.argv[1]
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
print(srv.getsockname()[1], flush=True)
c, _ = srv.accept(); f = c.makefile("rb")
while True:
    h = f.read(6)
    if len(h) < 6: break
    nlen, = struct.unpack(">H", h[:2]); size, = struct.unpack(">I", h[2:])
    name = f.read(nlen).decode()
    with open(os.path.join(dest, name), "wb") as out:
        left = size
        while left:
            chunk = f.read(min(left, 1 << 20)); out.write(chunk); left -= len(chunk)
c.sendall(b"k")
"""


def tcp_copy(src: Path, files: list[tuple[str, int]], dest: Path) -> float:
    dest.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", RECEIVER, str(dest)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None
    port = int(p.stdout.readline())
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port))
    for name, size in files:
        s.sendall(struct.pack(">HI", len(name), size) + name.encode())
        with open(src / name, "rb") as f:
            s.sendfile(f)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    dt = time.perf_counter() - t0
    s.close()
    p.wait()
    return dt


# ------------------------------------------------------------------ pcloud


class PcloudPair:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.a, self.b = base / "A", base / "B"
        self.nodes: dict[str, NodeProc] = {}

    def start(self) -> None:
        relay = f"127.0.0.1:{free_port()}"
        Vault.create(self.base / "va", name="dev-a").close()
        self.nodes["a"] = NodeProc("a", self.base / "va", ["serve", "--relay", relay, "--folder", str(self.a)],
                                   self.base).start()
        wait_for("A leads", lambda: self.nodes["a"].status()["raft"]["role"] == "leader")
        enroll(self.nodes["a"], self.base / "vb", "dev-b")
        self.nodes["b"] = NodeProc("b", self.base / "vb", ["serve", "--relay", relay, "--folder", str(self.b)],
                                   self.base).start()
        wait_for("both watching", lambda: all(len(n.status()["folders"]) == 1 and n.status()["folders"][0]["scanned"]
                                              for n in self.nodes.values()), 60)

    def stop(self) -> None:
        for n in self.nodes.values():
            n.stop()


# ------------------------------------------------------------------ syncthing


class Syncthing:
    """One Syncthing instance with its own home, GUI/REST and sync ports on 127.0.0.1."""

    def __init__(self, home: Path, name: str) -> None:
        self.home, self.name = home, name
        self.gui = free_tcp_port()
        self.port = free_tcp_port()
        self.key = "benchkey" + name
        self.proc: subprocess.Popen[bytes] | None = None
        self.id = ""

    def start(self) -> None:
        subprocess.run(["syncthing", "-generate", str(self.home)], check=True, capture_output=True)
        cfg = self.home / "config.xml"
        tree = ET.parse(cfg)
        root = tree.getroot()
        for f in root.findall("folder"):
            root.remove(f)           # the default folder
        gui = root.find("gui")
        gui.find("address").text = f"127.0.0.1:{self.gui}"
        (gui.find("apikey") if gui.find("apikey") is not None else ET.SubElement(gui, "apikey")).text = self.key
        opts = root.find("options")
        for tag, val in [("listenAddress", f"tcp://127.0.0.1:{self.port}"), ("globalAnnounceEnabled", "false"),
                         ("localAnnounceEnabled", "false"), ("relaysEnabled", "false"), ("natEnabled", "false"),
                         ("startBrowser", "false"), ("urAccepted", "-1"), ("autoUpgradeIntervalH", "0"),
                         ("crashReportingEnabled", "false")]:
            el = opts.find(tag)
            if el is None:
                el = ET.SubElement(opts, tag)
            el.text = val
        tree.write(cfg)
        log = open(self.home / "log.txt", "wb")
        self.proc = subprocess.Popen(["syncthing", "-home", str(self.home), "-no-browser", "-no-restart",
                                      "-logflags=0"], stdout=log, stderr=log,
                                     env=dict(os.environ, STNOUPGRADE="1", STNODEFAULTFOLDER="1"))
        wait_for(f"syncthing {self.name} REST", lambda: self.rest("GET", "/rest/system/status"), 60)
        self.id = self.rest("GET", "/rest/system/status")["myID"]

    def rest(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui}{path}", data=data, method=method,
                                     headers={"X-API-Key": self.key, "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw.strip() else {}

    def add_device(self, other: "Syncthing") -> None:
        self.rest("POST", "/rest/config/devices", {"deviceID": other.id, "name": other.name,
                                                    "addresses": [f"tcp://127.0.0.1:{other.port}"]})

    def add_folder(self, fid: str, path: Path, peers: list["Syncthing"]) -> None:
        self.rest("POST", "/rest/config/folders", {
            "id": fid, "label": fid, "path": str(path), "type": "sendreceive",
            "devices": [{"deviceID": self.id}] + [{"deviceID": p.id} for p in peers],
            "fsWatcherEnabled": True, "rescanIntervalS": 3600})

    def scan(self, fid: str) -> None:
        self.rest("POST", f"/rest/db/scan?folder={fid}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def free_tcp_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ensure_syncthing() -> str | None:
    """None if usable, else why not."""
    if shutil.which("syncthing") is None:
        r = subprocess.run(["apt-get", "install", "-y", "syncthing"], capture_output=True, text=True)
        if r.returncode != 0 or shutil.which("syncthing") is None:
            return f"syncthing not installed and apt-get failed: {r.stderr.strip()[-200:]}"
    return None


def syncthing_pair(base: Path) -> tuple[Syncthing, Syncthing, Path, Path]:
    sa, sb = Syncthing(base / "st-a", "a"), Syncthing(base / "st-b", "b")
    sa.start()
    sb.start()
    sa.add_device(sb)
    sb.add_device(sa)
    a, b = base / "STA", base / "STB"
    a.mkdir()
    b.mkdir()
    sa.add_folder("bench", a, [sb])
    sb.add_folder("bench", b, [sa])

    def connected() -> bool:
        conns = sa.rest("GET", "/rest/system/connections")["connections"]
        return conns.get(sb.id, {}).get("connected", False)
    wait_for("syncthing connected", connected, 60, interval=0.2)
    # a first file proves the folder is shared and running on both sides
    probe = [("probe.txt", 5)]
    (a / "probe.txt").write_bytes(b"probe")
    sa.scan("bench")
    wait_files(b, probe, 120)
    return sa, sb, a, b


# ------------------------------------------------------------------ 100k files


def big_vault(base: Path, n: int) -> dict[str, float]:
    from bench_folders import make_tree
    from pcloud.folders import FolderSync
    vdir, folder = base / "big-vault", base / "big"
    Vault.create(vdir, name="big").close()
    make_tree(folder, n)
    t0 = time.perf_counter()
    with Vault.open(vdir) as v:
        FolderSync(v, folder).sync_once(timeout=3600)
    first = time.perf_counter() - t0
    node = NodeProc("big", vdir, ["serve", "--folder", str(folder)], base)
    t0 = time.perf_counter()
    node.start(60)
    started = time.perf_counter() - t0
    wait_for("first rescan", lambda: node.status()["folders"] and node.status()["folders"][0]["scanned"], 600,
             interval=0.05)
    rescan = time.perf_counter() - t0
    committed = node.status()["folders"][0]["committed"]
    time.sleep(1.0)
    assert node.proc is not None
    rss = psutil.Process(node.proc.pid).memory_info().rss
    node.stop()
    return {"first": first, "start": started, "rescan": rescan - started, "rss": rss, "committed": committed}


# ------------------------------------------------------------------ main


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def _fresh(keep: Path, stage: Path) -> None:
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(keep, stage)


def pcloud_round(base: Path, keep_small: Path, keep_big: Path, small: list[tuple[str, int]],
                 big: list[tuple[str, int]], samples: int) -> dict[str, Any]:
    """One pcloud pair: both initial syncs (and the latency samples when ``samples``); its dirs are removed after."""
    out: dict[str, Any] = {}
    _fresh(keep_small, base / "stage-small")
    _fresh(keep_big, base / "stage-big")
    pair = PcloudPair(base / "pc")
    pair.start()
    try:
        if small:
            move_in(base / "stage-small", pair.a / "small")
            out["small"] = wait_files(pair.b / "small", small, 300)
        pids = {k: n.proc.pid for k, n in pair.nodes.items() if n.proc is not None}
        before = {k: cpu_times(pid) for k, pid in pids.items()}
        perf = None
        if os.environ.get("BENCH_PERF"):
            perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "1999", "-o", os.environ["BENCH_PERF"]],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
        spies = []
        if os.environ.get("BENCH_PYSPY"):
            for k, pid in pids.items():
                spies.append(subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid),
                                               "-r", "1999", "--gil", "--nonblocking", "-f", "raw", "-o", f"{os.environ['BENCH_PYSPY']}.{k}"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        move_in(base / "stage-big", pair.a / "big")
        out["big"] = wait_files(pair.b / "big", big, 600)
        if perf is not None:
            perf.send_signal(2)
            perf.wait()
        for spy in spies:
            spy.send_signal(2)
            spy.wait()
        out["big_phases"] = big_phases(pair)
        out["big_cpu"] = {k: cpu_since(pid, before[k]) for k, pid in pids.items()}
        if samples:
            out["lat"] = latency_samples(pair.a, pair.b, samples, 60)
    finally:
        pair.stop()
        shutil.rmtree(base / "pc", ignore_errors=True)  # its pages go back to the kernel for the next round
    return out


def cpu_times(pid: int) -> tuple[float, float, int, int, int]:
    """(user, system) CPU seconds of process ``pid`` and its children so far (threads included), their minor
    page faults, and the bytes they read from and wrote to the disk (not the page cache)."""
    total = [0.0, 0.0, 0, 0, 0]
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:  # Syncthing's monitor process runs the real one as a child
        try:
            t, io = p.cpu_times(), p.io_counters()
            minflt = int(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])
        except (psutil.Error, OSError):
            continue  # exited meanwhile
        for i, v in enumerate((t.user, t.system, minflt, io.read_bytes, io.write_bytes)):
            total[i] += v
    return total[0], total[1], int(total[2]), int(total[3]), int(total[4])


def cpu_since(pid: int, before: tuple[float, float, int, int, int]) -> dict[str, float]:
    """CPU seconds of ``pid`` since ``before`` (a `cpu_times`): user, system and their total; faults, disk I/O."""
    user, system, minflt, rd, wr = cpu_times(pid)
    return {"user": user - before[0], "sys": system - before[1], "total": user + system - before[0] - before[1],
            "faults": minflt - before[2], "disk_read": rd - before[3], "disk_write": wr - before[4]}


def fmt_cpu(cpu: dict[str, float]) -> str:
    return (f"{cpu['total']:.2f} s (user {cpu['user']:.2f}, sys {cpu['sys']:.2f}; {cpu['faults']:,.0f} faults, "
            f"disk read {cpu['disk_read'] / MiB:.0f} MiB, written {cpu['disk_write'] / MiB:.0f} MiB)")


def big_phases(pair: PcloudPair) -> dict[str, float]:
    """Where the 256 MiB sync's time went, from the two nodes' logs: A's cycle that committed the file (its
    hash = read, chunk, seal, store) and B's fetch of that commit (until main moved there)."""
    phases: dict[str, float] = {}
    lines = pair.nodes["a"].log_path.read_text().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        m = re.search(r"cycle committed 1, applied 0 in ([0-9.]+) s \(scan [0-9.]+, hash ([0-9.]+)", lines[i])
        if m:
            phases["a_cycle"], phases["a_hash"] = float(m.group(1)), float(m.group(2))
            # a file stored while the debounce window was open (SyncEngine.prehash) logs that just before
            early = re.search(r"stored \d+ finished file\(s\), \d+ MiB, before the commit window closed, in ([0-9.]+) s",
                              lines[i - 1]) if i else None
            phases["a_early"] = float(early.group(1)) if early else 0.0
            break
    for line in reversed(pair.nodes["b"].log_path.read_text().splitlines()):
        m = re.search(r"main is now \w+ \(fetched in ([0-9.]+) s\)", line)
        if m:
            phases["b_fetch"] = float(m.group(1))
            break
    return phases


def syncthing_round(base: Path, keep_small: Path, keep_big: Path, small: list[tuple[str, int]],
                    big: list[tuple[str, int]], samples: int) -> dict[str, Any]:
    """The same with a Syncthing pair (a REST rescan at t=0 for the initial syncs)."""
    out: dict[str, Any] = {}
    _fresh(keep_small, base / "stage-small")
    _fresh(keep_big, base / "stage-big")
    sa = sb = None
    try:
        sa, sb, a, b = syncthing_pair(base)
        if small:
            move_in(base / "stage-small", a / "small")
            t0 = time.perf_counter()
            sa.scan("bench")
            wait_files(b / "small", small, 600)
            out["small"] = time.perf_counter() - t0
        pids = {"a": sa.proc.pid, "b": sb.proc.pid} if sa.proc is not None and sb.proc is not None else {}
        before = {k: cpu_times(pid) for k, pid in pids.items()}
        move_in(base / "stage-big", a / "big")
        t0 = time.perf_counter()
        sa.scan("bench")
        wait_files(b / "big", big, 900)
        out["big"] = time.perf_counter() - t0
        out["big_cpu"] = {k: cpu_since(pid, before[k]) for k, pid in pids.items()}
        if samples:
            out["lat"] = latency_samples(a, b, samples, 120)
    finally:
        for inst in (sa, sb):
            if inst is not None:
                inst.stop()
        for d in ("st-a", "st-b", "STA", "STB"):
            shutil.rmtree(base / d, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3,
                    help="initial-sync rounds; pcloud and Syncthing alternate which goes first (medians reported)")
    ap.add_argument("--no-syncthing", action="store_true")
    ap.add_argument("--dry", action="store_true", help="print, do not append to RESULTS.md")
    ap.add_argument("--big-only", action="store_true",
                    help="only the 256 MiB initial sync rounds (no small files, latency or 100k-file parts); "
                         "prints each round with its phases and each node's CPU seconds, never appends (for iterating)")
    args = ap.parse_args()
    notes: list[str] = []
    res: dict[str, Any] = {}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as d:
        base = Path(d)
        small = [] if args.big_only else make_small(base / "stage-small")
        (base / "stage-small").mkdir(exist_ok=True)
        big = make_big(base / "stage-big")
        keep_small, keep_big = base / "keep-small", base / "keep-big"
        shutil.copytree(base / "stage-small", keep_small)
        shutil.copytree(base / "stage-big", keep_big)
        why = "disabled with --no-syncthing" if args.no_syncthing else ensure_syncthing()
        runs: dict[str, list[dict[str, Any]]] = {"pc": [], "st": [], "tcp": []}
        for r in range(args.rounds):
            order = ["pc", "st"] if r % 2 == 0 else ["st", "pc"]
            for tool in order:
                if tool == "st" and why is not None:
                    continue
                samples = args.samples if r == 0 and not args.big_only else 0
                try:
                    fn = pcloud_round if tool == "pc" else syncthing_round
                    runs[tool].append(fn(base, keep_small, keep_big, small, big, samples))
                except (OSError, TimeoutError, subprocess.CalledProcessError, ValueError) as exc:
                    if tool == "pc":
                        raise
                    why = f"syncthing run failed: {exc}"
                print(f"round {r + 1} {tool}", runs[tool][-1] if runs[tool] else why, flush=True)
                if tool == "st" and args.big_only and runs["st"] and runs["st"][-1].get("big_cpu"):
                    x = runs["st"][-1]
                    print(f"  Syncthing {x['big']:.2f} s; CPU A {fmt_cpu(x['big_cpu']['a'])}; "
                          f"CPU B {fmt_cpu(x['big_cpu']['b'])}", flush=True)
                if tool == "pc" and args.big_only:
                    x = runs["pc"][-1]
                    print(f"  pcloud {x['big']:.2f} s; phases {x['big_phases']}; CPU A {fmt_cpu(x['big_cpu']['a'])}; "
                          f"CPU B {fmt_cpu(x['big_cpu']['b'])}", flush=True)
            if args.big_only:
                continue
            tcp_small = tcp_copy(keep_small, small, base / "tcp-small")
            tcp_big = tcp_copy(keep_big, big, base / "tcp-big")
            shutil.rmtree(base / "tcp-small", ignore_errors=True)
            shutil.rmtree(base / "tcp-big", ignore_errors=True)
            runs["tcp"].append({"small": tcp_small, "big": tcp_big})
        if args.big_only:
            print("big, s: " + "; ".join(f"{name} " + ", ".join(f"{x['big']:.2f}" for x in runs[tool])
                                         for tool, name in (("pc", "pcloud"), ("st", "Syncthing")) if runs[tool]))
            print(f"load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end")
            return
        for tool, prefix in (("pc", "pc"), ("st", "st"), ("tcp", "tcp")):
            if runs[tool]:
                res[f"{prefix}_small"] = statistics.median(x["small"] for x in runs[tool])
                res[f"{prefix}_big"] = statistics.median(x["big"] for x in runs[tool])
                if "lat" in runs[tool][0]:
                    res[f"{prefix}_lat"] = runs[tool][0]["lat"]
        if "st_small" in res:
            res["st_version"] = subprocess.run(["syncthing", "--version"], capture_output=True,
                                               text=True).stdout.split()[1]
        for kind in ("small", "big"):
            notes.append(f"initial sync rounds ({kind}), s: " + "; ".join(
                f"{name} " + ", ".join(f"{x[kind]:.2f}" for x in runs[tool])
                for tool, name in (("pc", "pcloud"), ("st", "Syncthing"), ("tcp", "TCP")) if runs[tool]))
        phases = [x["big_phases"] for x in runs["pc"] if x.get("big_phases")]
        if phases and all({"a_hash", "b_fetch"} <= p.keys() for p in phases):
            notes.append("pcloud 256 MiB phases per round (node logs): " + "; ".join(
                f"A stored the file early {p.get('a_early', 0.0):.2f} s, A's commit cycle {p['a_cycle']:.2f} s "
                f"(hash+seal+store {p['a_hash']:.2f}), B's fetch after the commit {p['b_fetch']:.2f} s"
                for p in phases) + "; A stores a finished big file while the 150 ms debounce window is open (early), "
                "else in its cycle after it; B fetches the chunks A offers while A hashes: the phases overlap)")
            notes.append("pcloud 256 MiB CPU per round (all threads, from the file's arrival to its end on B): " + "; ".join(
                f"A {x['big_cpu']['a']['total']:.2f} s, B {x['big_cpu']['b']['total']:.2f} s" for x in runs["pc"]))
            if any(x.get("big_cpu") for x in runs["st"]):
                notes.append("Syncthing 256 MiB CPU per round (same window, its monitor's child included): " + "; ".join(
                    f"A {x['big_cpu']['a']['total']:.2f} s, B {x['big_cpu']['b']['total']:.2f} s"
                    for x in runs["st"] if x.get("big_cpu")))
        if why is not None:
            print(f"SKIPPING Syncthing: {why}", flush=True)
            notes.append(f"Syncthing skipped: {why}")

        bv = big_vault(base, args.files)
        print("big vault", bv, flush=True)

    def st(key: str, fmt: Callable[[Any], str]) -> str:
        return fmt(res[key]) if key in res else "skipped"
    p50 = lambda xs: statistics.median(xs)  # noqa: E731
    rows = [
        [f"initial sync, 1,000 files of 4-64 KiB (median of {args.rounds})", f"{res['pc_small']:.2f} s", st("st_small", lambda x: f"{x:.2f} s"),
         f"{res['tcp_small']:.2f} s",
         st("st_small", lambda x: f"Syncthing/pcloud time {x / res['pc_small']:.2f}") + f"; pcloud/TCP time {res['pc_small'] / res['tcp_small']:.1f}"],
        [f"initial sync, one 256 MiB file (median of {args.rounds})", f"{res['pc_big']:.2f} s", st("st_big", lambda x: f"{x:.2f} s"),
         f"{res['tcp_big']:.2f} s",
         st("st_big", lambda x: f"Syncthing/pcloud time {x / res['pc_big']:.2f}") + f"; pcloud/TCP time {res['pc_big'] / res['tcp_big']:.1f}"],
        [f"1 KiB write -> readable on B (p50 / max of {args.samples})",
         f"{ms(p50(res['pc_lat']))} / {ms(max(res['pc_lat']))}",
         st("st_lat", lambda x: f"{ms(p50(x))} / {ms(max(x))}"), "-",
         st("st_lat", lambda x: f"p50 {p50(x) / p50(res['pc_lat']):.0f}x lower than Syncthing")],
        [f"node holding {args.files:,} files: RSS", f"{bv['rss'] / MiB:.0f} MiB", "-", "-", ""],
        [f"node start -> first rescan of the unchanged {args.files:,}-file folder done", f"{bv['rescan']:.2f} s",
         "-", "-", f"(process start {bv['start']:.1f} s; first import {bv['first']:.0f} s)"],
    ]
    body = table(["measure", "pcloud", "Syncthing " + res.get("st_version", ""), "plain TCP copy", "pcloud vs"], rows)
    body += ("\n\nLatency samples (ms): pcloud " + ", ".join(f"{x * 1000:.0f}" for x in res["pc_lat"])
             + ("; Syncthing " + ", ".join(f"{x * 1000:.0f}" for x in res["st_lat"]) if "st_lat" in res else ""))
    notes += [
        "both on loopback, two devices, separate processes; files renamed into the watched folder at t=0; "
        "done = every file on B's disk with its size (latency: the exact bytes readable)",
        "pcloud: `pcloud serve --folder` x2 (QUIC, Raft CasHead per commit, sealed objects, 150 ms debounce); "
        "Syncthing: default folder settings (10 s watcher delay), discovery/relays off, a REST rescan is "
        "requested at t=0 for the two initial syncs only",
        "plain TCP copy: one connection, sendfile, no hashing, no encryption, no fsync",
        f"pcloud TCP bulk lane: {'on' if os.environ.get('PCLOUD_TCP_LANE') == '1' else 'default'} "
        f"(PCLOUD_TCP_LANE={os.environ.get('PCLOUD_TCP_LANE', 'unset')}); load average at start "
        f"{load0:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores shared with other jobs)",
        "initial syncs: medians of the rounds (each round's values in the notes above); latency from round 1",
        f"RSS/rescan: a `pcloud serve --folder` process on a vault that already holds the folder "
        f"({bv['committed']} commits made at the restart scan, expected 0)",
    ]
    if args.dry:
        print(body)
        print("\n".join(notes))
        return
    append_results("Two-device sync vs Syncthing (bench_sync.py)", body, notes)


if __name__ == "__main__":
    main()
