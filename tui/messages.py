"""App-wide messages (panel-specific ones live on their widget). Small dataclasses, one-line docstrings."""
from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from .model import Snapshot


@dataclass
class SnapshotReady(Message):
    """A new look at the node; a newer one replaces one still queued (polls can outrun the UI)."""

    snapshot: Snapshot

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, SnapshotReady)


@dataclass
class ActionDone(Message):
    """An action on the node finished: say what happened (or why not) and refresh."""

    text: str
    ok: bool = True


@dataclass
class NodeNotice(Message):
    """Something the user should know about the node (e.g. the app started one)."""

    text: str
