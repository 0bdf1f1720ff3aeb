"""The terminal app against real nodes (`pcloud serve` processes on 127.0.0.1), driven with textual's Pilot.

Covers: every panel renders the node's real data; an invitation made in the
app lets a second device join (`pcloud join CODE`, a real process); a change
written on that device appears in the activity view while the app runs; the
app revokes it (with confirmation); a merge conflict is opened and resolved
from the app; the app starts a node when none runs. The looks are snapshot
tests (tests/test_tui_snapshots.py) over a recording, so they are stable.
"""
from __future__ import annotations

import asyncio
import html
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest
from textual.pilot import Pilot

from pcloud import pins
from pcloud.nodeproc import NodeProc, join, wait_for
from pcloud.vault import Vault
from tui.app import PcloudApp, make_app
from tui.model import LiveModel, kept_name, parse_conflict
from tui.screens.dialogs import CompareScreen, ConfirmScreen, InviteScreen
from tui.widgets.common import Table

pytestmark = pytest.mark.timeout(120)

SIZE = (110, 32)


def screen_text(app: PcloudApp) -> str:
    """What the terminal shows, as plain text lines (from textual's own SVG export)."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = defaultdict(list)
    for m in re.finditer(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg):
        rows[float(m.group(2))].append((float(m.group(1)), html.unescape(m.group(3)).replace("\xa0", " ")))
    return "\n".join("".join(t for _, t in sorted(rows[y])) for y in sorted(rows))


async def until(pilot: Pilot, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        value = check()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out waiting for {what}; screen:\n{screen_text(pilot.app)}")


def notified(app: PcloudApp, text: str) -> bool:
    """True if a toast saying ``text`` was shown (toasts wrap, so they are read from the app, not the screen)."""
    return any(text in n.message for n in app._notifications)


def run_app(app: PcloudApp, body: Callable[[Pilot], Awaitable[None]]) -> None:
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, "the first snapshot", lambda: app.screen.snapshot is not None
                        and app.screen.snapshot.node_running)
            await body(pilot)
    asyncio.run(main())


@pytest.fixture(scope="module")
def laptop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    """A one-device vault with a few files and a running node (the app's vault)."""
    base = tmp_path_factory.mktemp("tui")
    with Vault.create(base / "laptop", name="laptop") as v:
        v.write("docs/plan.txt", b"version one")
        v.write("docs/plan.txt", b"version two, longer")
        v.write("readme.md", b"# hello")
    node = NodeProc("laptop", base / "laptop", ["serve", "--listen", "127.0.0.1:0"], base).start()
    try:
        wait_for("leader", lambda: node.status()["raft"]["role"] == "leader", 20)
        yield node
    finally:
        node.stop()


def _rows(app: PcloudApp, table_id: str) -> list[list[str]]:
    t = app.screen.query_one(f"#{table_id}", Table)
    return [[str(c) for c in t.get_row_at(i)] for i in range(t.row_count)]


def test_panels_show_the_nodes_real_data(laptop: NodeProc, tmp_path: Path) -> None:
    folder = tmp_path / "watched"
    app = make_app(laptop.dir, start_node=False, poll_interval=0.5, export_dir=tmp_path)
    status = laptop.status()

    async def body(pilot: Pilot) -> None:
        # Devices: this device, its id, owner, online
        rows = _rows(app, "devices-table")
        assert len(rows) == 1 and rows[0][0].startswith("laptop") and rows[0][1] == status["device_id"][:9]
        assert rows[0][2] == "owner" and "online" in rows[0][3]
        # Activity: the three commits' changes, newest first
        await pilot.press("2")
        changes = [r[3] for r in _rows(app, "changes")]
        assert changes == ["readme.md", "docs/plan.txt", "docs/plan.txt"]
        # Files: browse into docs/, a file's two versions, restore the first one
        await pilot.press("3")
        await until(pilot, "the listing", lambda: [r[0] for r in _rows(app, "listing")] == ["docs/", "readme.md"])
        await pilot.press("down", "e")                # export readme.md
        await until(pilot, "the export", lambda: (tmp_path / "readme.md").exists())
        assert (tmp_path / "readme.md").read_bytes() == b"# hello"
        await pilot.press("up")
        await pilot.press("p")                        # pin docs/ (a full device has it all: nothing to fetch)
        await until(pilot, "the pin answer", lambda: notified(app, "/docs pinned: kept on this device (0 objects"))
        assert pins.read_pins(laptop.dir) == ["docs"]
        await pilot.press("enter")
        await until(pilot, "docs/", lambda: [r[0] for r in _rows(app, "listing")] == ["..", "plan.txt"])
        await pilot.press("down", "enter")
        await until(pilot, "two versions", lambda: len(_rows(app, "versions")) == 2)
        assert "docs/plan.txt" in screen_text(app)
        await pilot.press("tab", "down", "r")         # the older version, restore
        await until(pilot, "the restore commit", lambda: app.screen.snapshot.changes
                    and app.screen.snapshot.changes[0].message.startswith("restore docs/plan.txt"))
        # Health: leader is this device, main reachable
        await pilot.press("6")
        text = screen_text(app)
        assert "← this device" in text and "reachable: writes go to main" in text, text
        # Folders: none watched; add one from the app (the vault's docs/ appears on disk), then remove it
        await pilot.press("4")
        assert "No watched folders" in screen_text(app)
        await pilot.press("a")
        await pilot.pause(0.2)
        await pilot.press(*f"{folder}=docs", "enter")
        await until(pilot, "the folder row", lambda: [r[1] for r in _rows(app, "folders-table")] == ["/docs"])
        await until(pilot, "docs/ on disk", lambda: (folder / "plan.txt").exists())
        await pilot.press("d")
        await until(pilot, "the confirmation", lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, "no folder", lambda: not app.screen.snapshot.folders)

    run_app(app, body)
    with Vault.open(laptop.dir) as v:
        assert v.read("docs/plan.txt") == b"version one"


def test_invite_join_remote_change_and_revoke(laptop: NodeProc, tmp_path: Path) -> None:
    app = make_app(laptop.dir, start_node=False, poll_interval=0.4)
    address = laptop.status()["address"]
    desktop: list[NodeProc] = []

    async def body(pilot: Pilot) -> None:
        await pilot.press("1", "i")
        await pilot.pause(0.2)
        await pilot.press("enter")                    # the first level offered: member
        invite = await until(pilot, "the invitation", lambda: isinstance(app.screen, InviteScreen) and app.screen)
        code = invite.invitation.code
        await pilot.pause(0.2)
        text = screen_text(app)
        assert code in text and "expires in" in text and "▀" in text + invite.invitation.qr   # QR drawn
        await pilot.press("escape")
        # a second device joins with the code shown, as a user would type it
        answer = await asyncio.to_thread(join, code, tmp_path / "desktop", "desktop", address, tmp_path)
        assert answer["trust"] == "member"
        desktop.append(await asyncio.to_thread(
            NodeProc("desktop", tmp_path / "desktop", ["serve", "--listen", "127.0.0.1:0"], tmp_path).start))
        await until(pilot, "desktop online", lambda: any(
            d.name == "desktop" and d.online for d in app.screen.snapshot.devices), 30)
        # it writes; the change shows in the activity view of the running app
        await pilot.press("2")

        def write() -> None:
            with Vault.open(tmp_path / "desktop") as v:
                wait_for("desktop has main", lambda: v.branches().get("main"), 20)
                v.write("from-desktop.txt", b"hi from the desktop")
        await asyncio.to_thread(write)
        await until(pilot, "the remote change", lambda: any(
            c.path == "from-desktop.txt" and c.device_name == "desktop" for c in app.screen.snapshot.changes), 30)
        # the snapshot is in; the activity table shows it at its next render
        await until(pilot, "the remote change on screen", lambda: "from-desktop.txt" in screen_text(app), 10)
        # and the objects it fetched for that change are counted against the desktop in the transfers table
        await until(pilot, "the desktop's transfer row", lambda: any(
            r[0] == "desktop" and r[1] != "0 B" for r in _rows(app, "transfers")))
        # make it a reader, then revoke it from the Devices panel, confirming
        await pilot.press("1")
        table = app.screen.query_one("#devices-table", Table)
        row = next(i for i, r in enumerate(_rows(app, "devices-table")) if r[0] == "desktop")
        table.move_cursor(row=row)
        await pilot.press("t")
        await pilot.pause(0.2)
        await pilot.press("down", "down", "enter")    # owner, member, [reader]
        await until(pilot, "desktop a reader", lambda: any(
            d.name == "desktop" and d.trust == "reader" for d in app.screen.snapshot.devices), 20)
        await pilot.press("x")
        await until(pilot, "the confirmation", lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, "desktop revoked", lambda: any(
            d.name == "desktop" and d.revoked for d in app.screen.snapshot.devices), 30)

    try:
        run_app(app, body)
        listing = laptop.call("devices")["devices"]
        assert next(d for d in listing if d["name"] == "desktop")["revoked"] is True
    finally:
        for n in desktop:
            n.stop()


def test_conflict_opened_and_resolved_from_the_app(laptop: NodeProc) -> None:
    with Vault.open(laptop.dir) as v:
        with v.commit("base") as tx:
            tx.write("c.txt", b"base")
            tx.write("d.txt", b"base")
        base = v.resolve("main").hex()
        v.create_branch("other", base)
        with v.commit_at(bytes.fromhex(base), "their edit", branch="other") as tx:
            tx.write("c.txt", b"theirs")
            tx.write("d.txt", b"their d")
        with v.commit("my edit") as tx:
            tx.write("c.txt", b"mine")
            tx.write("d.txt", b"my d")
        outcome = v.merge("other", into="main")
        copies = {c.path: c.copy_path for c in outcome.conflicts}
        assert set(copies) == {"c.txt", "d.txt"} and all(copies.values())
    app = make_app(laptop.dir, start_node=False, poll_interval=0.4, initial_tab="conflicts")

    async def body(pilot: Pilot) -> None:
        await until(pilot, "the conflict rows", lambda: [r[0] for r in _rows(app, "conflicts-table")]
                    == ["c.txt", "d.txt"])
        await until(pilot, "the count on the tab", lambda: "5 Conflicts (2)" in screen_text(app))
        await pilot.press("o")
        screen = await until(pilot, "both sides", lambda: isinstance(app.screen, CompareScreen) and app.screen)
        await pilot.pause(0.2)
        text = screen_text(app)
        assert "mine" in text and "theirs" in text and screen.sides[0][1] == b"mine"
        await pilot.press("escape")
        await pilot.press("t")                        # keep theirs (c.txt)
        await until(pilot, "one conflict left", lambda: len(app.screen.snapshot.conflicts) == 1)
        await until(pilot, "the d.txt row", lambda: [r[0] for r in _rows(app, "conflicts-table")] == ["d.txt"])
        await pilot.press("k")                        # keep both (d.txt)
        await until(pilot, "no conflicts left", lambda: not app.screen.snapshot.conflicts)
        assert "No conflicts" in screen_text(app)

    run_app(app, body)
    with Vault.open(laptop.dir) as v:
        assert v.read("c.txt") == b"theirs" and not v.exists(copies["c.txt"])
        assert v.read("d.txt") == b"my d" and not v.exists(copies["d.txt"])
        kept = [e.path for e in v.ls("") if e.path.startswith("d (")]
        assert len(kept) == 1 and v.read(kept[0]) == b"their d"
        v.delete_branch("other")


def test_app_starts_a_node_when_none_runs(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="solo").close()
    app = make_app(tmp_path / "v", poll_interval=0.5)
    model = app.model
    assert isinstance(model, LiveModel)

    async def body(pilot: Pilot) -> None:
        await until(pilot, "the notice", lambda: notified(app, "started `pcloud serve` in the background"))
        assert app.screen.snapshot.devices[0].name == "solo"

    try:
        run_app(app, body)
        assert model.started is not None and model.started.poll() is None     # it outlives the app
    finally:
        if model.started is not None:
            model.started.terminate()
            model.started.wait(20)


def test_no_node_and_not_starting_one_says_so(tmp_path: Path) -> None:
    Vault.create(tmp_path / "v", name="solo").close()
    app = make_app(tmp_path / "v", start_node=False, poll_interval=0)

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, "the reason", lambda: "no node is running" in screen_text(app))
            assert app.screen.snapshot is not None and not app.screen.snapshot.node_running
    asyncio.run(main())


def test_conflict_names_parse_and_keep_both_name() -> None:
    parsed = parse_conflict("dir/report.conflict-ABCD-EFGH-IJKL-MNOP-20261122-101500-1.pdf")
    assert parsed == ("dir/report.pdf", "ABCD-EFGH-IJKL-MNOP", "2026-11-22 10:15:00")
    assert parse_conflict("dir/report.pdf") is None and parse_conflict(".conflict-AB-20261122-101500") is None
    from tui.model import ConflictRow
    row = ConflictRow("dir/report.conflict-ABCD-20261122-101500.pdf", "dir/report.pdf", "ABCD", "2026-11-22 10:15:00")
    assert kept_name(row) == "dir/report (ABCD 2026-11-22 101500).pdf"


def test_activity_log_counts_the_rest_of_a_big_commit(tmp_path: Path) -> None:
    from tui.model import PATHS_PER_COMMIT, _recent_changes
    with Vault.create(tmp_path / "v", name="solo") as v:
        with v.commit("import 30 files") as tx:
            for i in range(30):
                tx.write(f"f{i:02}.txt", b"x")
        rows = _recent_changes(v, {v.device_id: "solo"})
    assert len(rows) == PATHS_PER_COMMIT + 1 and rows[0].device_name == "solo"
    assert rows[-1].kind == "more" and rows[-1].path.startswith(f"… {30 - PATHS_PER_COMMIT} more")


def test_pcloud_without_a_vault_says_what_to_do(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    repo = Path(__file__).resolve().parent.parent
    p = subprocess.run([sys.executable, "-m", "pcloud", "--vault", str(tmp_path / "none")], capture_output=True,
                       text=True, timeout=60, cwd=str(repo), env=dict(os.environ, PYTHONPATH=str(repo)))
    assert p.returncode == 1 and "is not a vault: run `pcloud init`" in p.stderr, p.stderr


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"taken_at": 1, "vault_dir": "x", "node_running": true, '
                                  '"devices": [{"name": "a"}]}', '{"files": 3}'])
def test_a_bad_recording_is_refused_clearly(tmp_path: Path, text: str) -> None:
    from pcloud import errors
    from tui.model import FixedModel
    (tmp_path / "rec.json").write_text(text)
    with pytest.raises(errors.BadArgument, match="not a TUI recording"):
        FixedModel.load(tmp_path / "rec.json")
