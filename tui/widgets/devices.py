"""Devices panel: every device of the vault, and invite / trust / revoke."""
from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from ..model import DeviceRow, Snapshot, when
from .common import Table


class DevicesPanel(Vertical):
    """The device table. Posts `InviteRequested`, `TrustRequested`, `RevokeRequested` (the screen acts)."""

    BINDINGS = [
        Binding("i", "invite", "Invite"),
        Binding("t", "trust", "Trust"),
        Binding("x", "revoke", "Revoke"),
    ]

    @dataclass
    class InviteRequested(Message):
        """The user wants an invitation code."""

    @dataclass
    class TrustRequested(Message):
        """Change this device's trust level."""

        device: DeviceRow

    @dataclass
    class RevokeRequested(Message):
        """Revoke this device (after confirmation)."""

        device: DeviceRow

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.rows: dict[str, DeviceRow] = {}

    def compose(self) -> ComposeResult:
        yield Static("", classes="panel-title", id="devices-title")
        yield Table("Name", "Id", "Trust", "State", "Path", "RTT", "Seen", "Policy", id="devices-table")

    def show(self, snap: Snapshot) -> None:
        self.rows = {d.key: d for d in snap.devices}
        online = sum(1 for d in snap.devices if d.online)
        active = sum(1 for d in snap.devices if not d.revoked)
        self.query_one("#devices-title", Static).update(
            f"Devices — {online} of {active} online  (* this device; i invite · t trust · x revoke)")
        self.query_one(Table).refill((d.key, _cells(d, snap.taken_at)) for d in snap.devices)

    def selected(self) -> DeviceRow | None:
        key = self.query_one(Table).selected_key()
        return self.rows.get(key) if key else None

    def action_invite(self) -> None:
        self.post_message(self.InviteRequested())

    def action_trust(self) -> None:
        d = self.selected()
        if d is not None:
            self.post_message(self.TrustRequested(d))

    def action_revoke(self) -> None:
        d = self.selected()
        if d is not None:
            self.post_message(self.RevokeRequested(d))


def _cells(d: DeviceRow, now: float) -> tuple[object, ...]:
    name = Text(d.name + (" *" if d.this_device else ""), style="bold" if d.this_device else "")
    if d.revoked:
        state = Text("revoked", style="strike")
    elif d.online:
        state = Text("● online", style="bold")
    else:
        state = Text("○ offline", style="dim")
    policy = (d.policy or "—") + ("" if d.voter else ", replica")
    rtt = f"{d.rtt_ms:.1f}ms" if d.rtt_ms is not None else "—"
    path = "self" if d.this_device else (d.path or "—")
    return (name, d.device_id[:9], d.trust, state, path, rtt, when(d.last_seen, now), policy)
