"""Conflicts panel: conflict copies in main with both sides' device and time; keep one, keep both, open both."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from ..model import ConflictRow, Snapshot
from .common import Table


class ConflictsPanel(Vertical):
    """Posts `Resolve` (keep-mine / keep-theirs / keep-both) and `OpenBoth`."""

    BINDINGS = [
        Binding("m", "resolve('keep-mine')", "Keep mine"),
        Binding("t", "resolve('keep-theirs')", "Keep theirs"),
        Binding("k", "resolve('keep-both')", "Keep both"),
        Binding("o", "open_both", "Open both"),
    ]

    @dataclass
    class Resolve(Message):
        """Resolve a conflict one way."""

        conflict: ConflictRow
        how: str

    @dataclass
    class OpenBoth(Message):
        """Show both sides."""

        conflict: ConflictRow

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.rows: dict[str, ConflictRow] = {}

    def compose(self) -> ComposeResult:
        yield Static("", classes="panel-title", id="conflicts-title")
        yield Table("File", "This side", "Other side", "Conflict copy", id="conflicts-table")

    def show(self, snap: Snapshot) -> None:
        self.rows = {c.copy_path: c for c in snap.conflicts}
        n = len(snap.conflicts)
        self.query_one("#conflicts-title", Static).update(
            "No conflicts" if n == 0 else f"{n} conflict{'s' if n > 1 else ''}: m keep mine · t keep theirs · "
                                          "k keep both · o open both")
        names = {d.device_id: d.name for d in snap.devices}
        self.query_one(Table).refill((c.copy_path, _cells(c, names)) for c in snap.conflicts)

    def selected(self) -> ConflictRow | None:
        key = self.query_one(Table).selected_key()
        return self.rows.get(key) if key else None

    def action_resolve(self, how: str) -> None:
        c = self.selected()
        if c is not None:
            self.post_message(self.Resolve(c, how))

    def action_open_both(self) -> None:
        c = self.selected()
        if c is not None:
            self.post_message(self.OpenBoth(c))


def _cells(c: ConflictRow, names: dict[str, str]) -> tuple[str, ...]:
    def who(device: str) -> str:
        return names.get(device, device[:9]) if device else "—"
    if not c.original_exists:
        mine = "(deleted)"
    elif c.original_time_ns:
        mine = f"{who(c.original_device)} " + datetime.fromtimestamp(c.original_time_ns / 1e9, timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S")
    else:
        mine = "—"
    return (c.original_path, mine, f"{who(c.copy_device)} {c.copy_time}", c.copy_path.rsplit("/", 1)[-1])
