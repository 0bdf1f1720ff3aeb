"""How the terminal app looks: snapshot tests of every tab at 80x24 and 120x40 (pytest-textual-snapshot).

The app runs on a recording (tests/data/tui_recording.json, built by
tests/data/make_tui_recording.py: four devices, transfers in flight, a
conflict, two watched folders), so ids and times are the same every run.
Update after an intended change with ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs under tests/__snapshots__/.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from textual.pilot import Pilot

from tui.app import PcloudApp, make_app
from tui.model import FixedModel
from tui.widgets.common import Table

RECORDING = Path(__file__).parent / "data" / "tui_recording.json"
TABS = ["devices", "activity", "files", "folders", "conflicts", "health"]


def recorded_app(tab: str) -> PcloudApp:
    return make_app(model=FixedModel.load(RECORDING), poll_interval=0, initial_tab=tab)


async def settled(pilot: Pilot) -> None:
    """Wait for the worker-thread poll and the file listing, so the picture never depends on timing."""
    app = pilot.app
    for _ in range(100):
        screen = app.screen
        if getattr(screen, "snapshot", None) is not None and screen.query_one("#listing", Table).row_count:
            break
        await pilot.pause(0.05)
    for _ in range(3):       # a DataTable sizes its columns on the refresh after its rows arrive
        await pilot.pause(0.05)


@pytest.mark.parametrize("tab", TABS)
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_tab(snap_compare, tab: str, size: tuple[int, int]) -> None:
    assert snap_compare(recorded_app(tab), terminal_size=size, run_before=settled)


def test_help_screen(snap_compare) -> None:
    assert snap_compare(recorded_app("devices"), terminal_size=(80, 24), run_before=settled,
                        press=["question_mark"])


def test_readme_documents_every_key_and_its_screenshots_exist() -> None:
    """The README's key table is the help screen's table (tui.screens.help.KEYS), and its pictures exist."""
    from tui.screens.help import markdown_table
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert markdown_table() in readme, "README key table is stale: paste tui.screens.help.markdown_table()"
    for name in ("tui-devices.svg", "tui-activity.svg"):
        assert f"docs/{name}" in readme and (Path(__file__).parent.parent / "docs" / name).exists()


def test_invite_dialog(snap_compare) -> None:
    """The invitation dialog: code, countdown (a fixed clock) and the QR code, at 80x24 (it scrolls)."""
    from pcloud.membership import render_qr
    from tui.model import Invitation
    from tui.screens.dialogs import InviteScreen

    code = "PB4H-J4-6IYP-F566-PUNM"
    invitation = Invitation(code, expires_at=1_000_000_600.0, trust="member", qr=render_qr(code))

    async def open_dialog(pilot: Pilot) -> None:
        await settled(pilot)
        await pilot.app.push_screen(InviteScreen(invitation, clock=lambda: 1_000_000_000.0 + 45))
        await pilot.pause(0.1)

    assert snap_compare(recorded_app("devices"), terminal_size=(80, 24), run_before=open_dialog)


def test_light_theme(snap_compare) -> None:
    """Colours come from the theme: the same screen on a light terminal theme stays readable."""
    app = recorded_app("activity")

    async def light(pilot: Pilot) -> None:
        pilot.app.theme = "textual-light"
        await settled(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=light)


def test_mouse_switches_tabs_and_selects_rows() -> None:
    import asyncio
    from textual.widgets import TabbedContent

    async def main() -> None:
        app = recorded_app("devices")
        async with app.run_test(size=(80, 24)) as pilot:
            await settled(pilot)
            await pilot.click("#--content-tab-health")
            assert app.screen.query_one(TabbedContent).active == "health"
            await pilot.click("#--content-tab-devices")
            await pilot.pause()
            table = app.screen.query_one("#devices-table", Table)
            await pilot.click(table, offset=(3, 3))      # header row, then laptop, desktop: the third line
            await pilot.pause()
            assert table.cursor_row == 2
    asyncio.run(main())
