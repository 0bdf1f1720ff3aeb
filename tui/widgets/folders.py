"""Folders panel: the node's watched folders, their vault paths and ignore patterns."""
from __future__ import annotations

from dataclasses import dataclass

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import DataTable, Static

from ..model import FolderRow, Snapshot
from .common import Table


class FoldersPanel(Vertical):
    """Watched folders; posts `EditIgnore`, `AddFolder`, `RemoveFolder` for the screen to handle."""

    BINDINGS = [
        Binding("a", "add", "Add"),
        Binding("d", "remove", "Remove"),
        Binding("g", "ignore", "Ignore…"),
    ]

    @dataclass
    class EditIgnore(Message):
        """Edit this folder's ignore patterns."""

        folder: FolderRow

    @dataclass
    class AddFolder(Message):
        """Watch a new folder."""

    @dataclass
    class RemoveFolder(Message):
        """Stop watching this folder."""

        folder: FolderRow

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.rows: dict[str, FolderRow] = {}

    def compose(self) -> ComposeResult:
        yield Static("Watched folders", classes="panel-title")
        yield Table("Folder", "Vault path", "Sent", "Received", "Scan", id="folders-table")
        yield Static("Ignore patterns (.pcloudignore)", classes="panel-title")
        yield Static("", id="ignore-text")

    def show(self, snap: Snapshot) -> None:
        self.rows = {f.dir: f for f in snap.folders}
        self.query_one(Table).refill(
            (f.dir, (f.dir, "/" + f.vault_path, str(f.committed), str(f.applied), "done" if f.scanned else "…"))
            for f in snap.folders)
        if not snap.folders:
            self.query_one("#ignore-text", Static).update(
                "No watched folders: press a to add one (or `pcloud folders add DIR=VAULTPATH`).")
        else:
            self._show_ignore()

    @on(DataTable.RowHighlighted)
    def _show_ignore(self) -> None:
        f = self.selected()
        if f is not None:
            self.query_one("#ignore-text", Static).update(f.ignore or "(none)")

    def selected(self) -> FolderRow | None:
        key = self.query_one(Table).selected_key()
        return self.rows.get(key) if key else None

    def action_add(self) -> None:
        self.post_message(self.AddFolder())

    def action_remove(self) -> None:
        f = self.selected()
        if f is not None:
            self.post_message(self.RemoveFolder(f))

    def action_ignore(self) -> None:
        f = self.selected()
        if f is not None:
            self.post_message(self.EditIgnore(f))
