"""`pcloud demo`: a narrated tour that really runs, on this machine only.

By default three devices — a laptop, a phone and a cloud node — run as separate
processes (`pcloud serve`, `pcloud relay`) in temporary directories, talking
QUIC on 127.0.0.1 only (`pcloud.nodeproc`). The tour enrolls them with
one-time invitation codes (`pcloud relay --join`, `pcloud join`), writes files and a document on the laptop, shows
them arriving on the phone and on the cloud node (which holds ciphertext only),
edits the document on two devices at once and shows the CRDT merge, kills the
Raft leader with SIGKILL and shows the vault still takes writes, restarts it
and shows it catch up, then stops everything and deletes the directories.

`pcloud demo --local` is the single-device tour of the vault itself (store,
history, branches, a 3-way merge with a conflict kept on both sides,
documents, integrity checks).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

from .vault import Vault


def run_demo(out: Console, *, keep: bool = False, local: bool = False) -> None:
    base = Path(tempfile.mkdtemp(prefix="pcloud-demo-"))
    t0 = time.monotonic()
    try:
        if local:
            _tour(out, base)
        else:
            from .demo_devices import three_devices
            three_devices(out, base)
    finally:
        if keep:
            out.print(f"\n[dim]kept the demo directories in {base}[/]")
        else:
            shutil.rmtree(base, ignore_errors=True)
    out.print(f"\n[green]demo finished in {time.monotonic() - t0:.1f} s[/]")


def _step(out: Console, title: str) -> None:
    out.print()
    out.print(Rule(f"[bold]{title}[/]", align="left"))


def _tour(out: Console, base: Path) -> None:
    vdir = base / "laptop"
    _step(out, "1. A new vault on this laptop")
    v = Vault.create(vdir, name="laptop")
    out.print(f"vault [cyan]{v.vault_id}[/], this device [cyan]{v.device_name}[/] "
              f"with id [cyan]{v.device_id}[/] (owner)")
    out.print(f"device key and sealed vault key are files with mode "
              f"{oct(os.stat(vdir / 'keyring.sealed').st_mode & 0o777)} in {vdir}")

    _step(out, "2. Put a folder: files are chunked, sealed with the vault key, one commit")
    src = base / "Documents"
    (src / "notes").mkdir(parents=True)
    (src / "notes" / "todo.txt").write_text("buy milk\ncall mum\n")
    (src / "report.md").write_text("# Quarterly report\n\nAll good.\n")
    (src / "photo.bin").write_bytes(os.urandom(3 << 20))
    res = v.import_path(src, "Documents")
    out.print(f"put {res.files} files, {res.bytes:,} bytes -> commit [yellow]{res.commit[:12]}[/]")
    for e in v.ls("Documents", recursive=True):
        out.print(f"  {e.size:>10,}  {e.path}")
    res2 = v.import_path(src, "Documents")
    out.print(f"put again: {res2.unchanged} files unchanged (stat cache), "
              f"{'no new commit' if res2.commit is None else 'commit ' + res2.commit[:12]}")

    _step(out, "3. On disk everything is ciphertext")
    marker = b"Quarterly report"
    hits = [p for p in vdir.rglob("*") if p.is_file() and marker in p.read_bytes()]
    out.print(f"files in the vault directory containing {marker.decode()!r}: {len(hits)}")

    _step(out, "4. Branches and a 3-way merge that keeps both sides of a conflict")
    v.create_branch("trip")
    v.write("Documents/report.md", "# Quarterly report\n\nAll good. Revenue up.\n", message="main: revenue")
    v.switch("trip")
    v.write("Documents/report.md", "# Quarterly report\n\nWritten on the train.\n", message="trip: train edit")
    v.write("Documents/notes/packing.txt", "passport\n", message="trip: packing list")
    v.switch("main")
    m = v.merge("trip")
    out.print(f"merged trip into main -> [yellow]{m.commit[:12]}[/]")
    for c in m.conflicts:
        out.print(f"  conflict on {c.path}: both kept, the other side as [magenta]{c.copy_path}[/]")
    for e in v.ls("Documents", recursive=True):
        out.print(f"  {e.path}")

    _step(out, "5. A CRDT document edited on two branches merges without conflict copies")
    with v.doc("Documents/shopping.doc") as d:
        d.insert_text(0, "eggs\n")
        d.map()["owner"] = "laptop"
    v.create_branch("phone")
    with v.doc("Documents/shopping.doc") as d:
        d.append_text("bread\n")
    v.switch("phone")
    with v.doc("Documents/shopping.doc") as d:
        d.append_text("apples\n")
        d.map()["shared"] = "yes"
    v.switch("main")
    m2 = v.merge("phone")
    out.print(f"merged: {len(m2.conflicts)} conflicts; the document now holds:")
    out.print(v.doc("Documents/shopping.doc").to_json())

    _step(out, "6. History and integrity")
    for c in v.log(6):
        out.print(f"  [yellow]{c.commit[:12]}[/] {c.device}  {c.message}")
    f = v.fsck()
    out.print(f"fsck: {f.objects} objects verified, ok={f.ok}")

    out.print("\nSyncing between devices: run `pcloud demo` without --local.")
    v.close()

