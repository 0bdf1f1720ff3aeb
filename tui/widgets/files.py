"""Files panel: browse main or another branch, a file's versions, restore, export, pin."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Static

from pcloud import errors
from pcloud.records import Entry

from ..messages import ActionDone
from ..model import Snapshot, Version, human_bytes
from .common import Table


class FilesPanel(Vertical):
    """Listing on the left, the selected file's versions on the right. Reads run on worker threads."""

    BINDINGS = [
        Binding("b", "branch", "Branch"),
        Binding("backspace", "up", "Up", show=False),
        Binding("r", "restore", "Restore"),
        Binding("e", "export", "Export"),
        Binding("p", "pin", "Pin"),
    ]

    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)
        self.ref = "main"
        self.cwd = ""
        self.branches: tuple[str, ...] = ("main",)
        self.entries: dict[str, Entry] = {}
        self.versions: dict[str, Version] = {}
        self.file: str | None = None
        self._head: str | None = None

    def compose(self) -> ComposeResult:
        yield Static("", classes="panel-title", id="files-title")
        with Horizontal():
            yield Table("Name", "Size", id="listing")
            yield Table("Version", "When", "Who", "Size", id="versions")

    def show(self, snap: Snapshot) -> None:
        self.branches = snap.branches or ("main",)
        head = snap.health.main
        if head != self._head or not self.entries:
            self._head = head
            self.load()

    def _title(self) -> None:
        where = "/" + self.cwd if self.cwd else "/"
        self.query_one("#files-title", Static).update(
            f"Branch [b]{self.ref}[/b]  {where}" + (f"  — {self.file}" if self.file else ""))

    @work(thread=True, exclusive=True, group="files-list")
    def load(self) -> None:
        try:
            entries = self.app.model.list_dir(self.cwd, self.ref)
        except errors.PcloudError as exc:
            self.app.call_from_thread(self.app.notify, str(exc), severity="warning")
            entries = []
        self.app.call_from_thread(self._fill, entries)

    def _fill(self, entries: list[Entry]) -> None:
        self.entries = {e.path: e for e in entries}
        rows = [("..", (Text("..", style="bold"), ""))] if self.cwd else []
        for e in sorted(entries, key=lambda e: (e.kind != "dir", e.path)):
            name = e.path.rsplit("/", 1)[-1]
            label = Text(name + "/", style="bold") if e.kind == "dir" else Text(name)
            rows.append((e.path, (label, "" if e.kind == "dir" else human_bytes(e.size))))
        self.query_one("#listing", Table).refill(rows)
        self._title()

    @on(DataTable.RowSelected, "#listing")
    def _open(self, event: DataTable.RowSelected) -> None:
        key = event.row_key.value
        if key == "..":
            self.action_up()
            return
        e = self.entries.get(key or "")
        if e is None:
            return
        if e.kind == "dir":
            self.cwd, self.file = e.path, None
            self.query_one("#versions", Table).clear()
            self.load()
        else:
            self.file = e.path
            self._title()
            self.load_versions(e.path)

    @work(thread=True, exclusive=True, group="files-versions")
    def load_versions(self, path: str) -> None:
        try:
            versions = self.app.model.versions(path, self.ref)
        except errors.PcloudError as exc:
            self.app.call_from_thread(self.app.notify, str(exc), severity="warning")
            versions = []
        self.app.call_from_thread(self._fill_versions, versions)

    def _fill_versions(self, versions: list[Version]) -> None:
        self.versions = {v.commit: v for v in versions}
        self.query_one("#versions", Table).refill(
            (v.commit, (v.commit[:10], datetime.fromtimestamp(v.time_ns / 1e9, timezone.utc).strftime("%m-%d %H:%M"),
                        v.device[:9], human_bytes(v.size))) for v in versions)

    def action_up(self) -> None:
        if self.cwd:
            self.cwd, self.file = self.cwd.rpartition("/")[0], None
            self.load()

    def action_branch(self) -> None:
        order = list(self.branches)
        self.ref = order[(order.index(self.ref) + 1) % len(order)] if self.ref in order else "main"
        self.cwd, self.file = "", None
        self.query_one("#versions", Table).clear()
        self.load()

    def action_restore(self) -> None:
        commit = self.query_one("#versions", Table).selected_key()
        if self.file is None or commit is None:
            self.app.notify("select a file (Enter) and one of its versions first", severity="warning")
            return
        self._act(f"restored {self.file} from {commit[:10]}", self.app.model.restore, self.file, commit)

    def action_export(self) -> None:
        path = self.query_one("#listing", Table).selected_key()
        if not path or path == "..":
            return
        dest = Path(self.app.export_dir) / path.rsplit("/", 1)[-1]
        if dest.exists():
            self.app.notify(f"{dest} exists; not overwritten", severity="warning")
            return
        self._act(f"exported {path} to {dest}", self.app.model.export, path, self.ref, dest)

    def action_pin(self) -> None:
        key = self.query_one("#listing", Table).selected_key()
        path = self.cwd if key in (None, "..") else key
        self._act("", self.app.model.pin, path, self.ref)

    @work(thread=True, group="files-act")
    def _act(self, done: str, fn, *args: object) -> None:  # type: ignore[no-untyped-def]
        """Run ``fn(*args)``; say ``done`` (or what ``fn`` returned, when ``done`` is empty)."""
        try:
            result = fn(*args)
        except errors.PcloudError as exc:
            self.post_message(ActionDone(f"not done: {exc}", ok=False))
            return
        self.post_message(ActionDone(done or str(result)))
        if self.file:
            self.app.call_from_thread(self.load_versions, self.file)
