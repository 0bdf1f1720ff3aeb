"""Health panel: Raft leader and our role, whether main is reachable, cloud nodes."""
from __future__ import annotations

from rich.table import Table as RichTable
from rich.text import Text
from textual.widgets import Static

from ..model import Snapshot


class HealthPanel(Static):
    """A read-only summary; refreshed with every snapshot. Focusable, so the tab keeps focus inside it."""

    can_focus = True

    def show(self, snap: Snapshot) -> None:
        h = snap.health
        t = RichTable(show_header=False, box=None, padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        if not snap.node_running:
            t.add_row("node", Text("not running — " + (snap.error or ""), style="bold"))
            self.update(t)
            return
        t.add_row("this device", f"{h.name} ({h.device_id}), {h.role or '—'}, policy {h.policy or '—'}")
        t.add_row("address", h.address or "—")
        leader = "none (election or no majority)" if not h.leader else (
            f"{h.leader_name or ''} ({h.leader})" + ("  ← this device" if h.leader == h.device_id else ""))
        t.add_row("Raft leader", leader)
        if h.has_quorum and not h.local_branch:
            t.add_row("main", Text("reachable: writes go to main (a Raft majority answers)", style="bold"))
        elif h.local_branch:
            t.add_row("main", Text(f"writes are kept on {h.local_branch}; merged into main when a majority is back",
                                   style="reverse"))
        else:
            t.add_row("main", Text("no Raft majority reachable: new writes will go to the local branch",
                                   style="reverse"))
        t.add_row("main head", (h.main or "—")[:16])
        if h.cloud:
            for name, online, path in h.cloud:
                t.add_row("cloud node", f"{name}: " + (f"reachable ({path or 'session up'})" if online
                                                      else "unreachable"))
        else:
            t.add_row("cloud node", "none in this vault")
        for note in h.notices[-3:]:
            t.add_row("notice", note)
        self.update(t)
