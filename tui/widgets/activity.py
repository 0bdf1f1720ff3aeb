"""Sync activity panel: what is moving per peer (bars, rates, time left) and the log of recent changes."""
from __future__ import annotations

from datetime import datetime, timezone

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import ProgressBar, Static

from ..model import Snapshot, human_bytes
from .common import Table, bar

KIND_MARK = {"added": "+", "removed": "−", "modified": "~", "renamed": "→", "more": "…"}


class ActivityPanel(Vertical):
    """Per-peer transfers on top, recent changes of main (who, what, when) below."""

    def compose(self) -> ComposeResult:
        yield Static("", classes="panel-title", id="activity-title")
        yield ProgressBar(total=1, show_eta=False, id="sync-bar")
        yield Table("Peer", "Received", "Objects", "Rate", "Share", id="transfers", classes="short-table")
        yield Static("Recent changes on main", classes="panel-title")
        yield Table("When", "Who", "", "Path", id="changes")

    def show(self, snap: Snapshot) -> None:
        s = snap.sync
        if s.wanted_objects:
            left = s.remaining_s
            eta = "—" if left is None else f"{left:.0f}s left"
            title = (f"Syncing: {s.wanted_objects} objects / {human_bytes(s.wanted_bytes)} to fetch, "
                     f"{human_bytes(s.rate_bps)}/s, {eta}")
        else:
            title = "Up to date" + (" — fetching" if s.running else "")
        self.query_one("#activity-title", Static).update(title)
        got = sum(p.bytes for p in s.peers)
        self.query_one("#sync-bar", ProgressBar).update(total=max(1, got + s.wanted_bytes), progress=got)
        total = max(1, got + s.wanted_bytes)
        self.query_one("#transfers", Table).refill(
            (p.device_id, (p.name, human_bytes(p.bytes), str(p.objects), f"{human_bytes(p.rate_bps)}/s",
                           bar(p.bytes / total)))
            for p in s.peers)
        rows = []
        for i, c in enumerate(snap.changes):
            t = datetime.fromtimestamp(c.time_ns / 1e9, timezone.utc).strftime("%m-%d %H:%M:%S")
            path = f"{c.old_path} → {c.path}" if c.old_path and c.old_path != c.path else c.path
            rows.append((f"{c.commit}:{i}", (t, c.device_name, Text(KIND_MARK.get(c.kind, c.kind), style="bold"),
                                             path)))
        self.query_one("#changes", Table).refill(rows)
