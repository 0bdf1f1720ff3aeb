"""The main screen: six tabs, one panel each, refreshed from the model on a worker thread."""
from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static, TabbedContent, TabPane

from pcloud import errors

from ..messages import ActionDone, NodeNotice, SnapshotReady
from ..model import Snapshot
from ..widgets.activity import ActivityPanel
from ..widgets.conflicts import ConflictsPanel
from ..widgets.devices import DevicesPanel
from ..widgets.files import FilesPanel
from ..widgets.folders import FoldersPanel
from ..widgets.health import HealthPanel
from .dialogs import ChoiceScreen, CompareScreen, ConfirmScreen, IgnoreScreen, InputScreen, InviteScreen

TABS = [("devices", "Devices"), ("activity", "Activity"), ("files", "Files"), ("folders", "Folders"),
        ("conflicts", "Conflicts"), ("health", "Health")]
TRUST_LEVELS = ["owner", "member", "reader", "storage"]


class MainScreen(Screen[None]):
    BINDINGS = [Binding(str(i + 1), f"tab('{tid}')", label, show=False) for i, (tid, label) in enumerate(TABS)] + [
        Binding("ctrl+r", "refresh", "Refresh"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.snapshot: Snapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(" pcloud", id="status-line")
        with TabbedContent(initial=self.app.initial_tab):
            with TabPane("1 Devices", id="devices"):
                yield DevicesPanel()
            with TabPane("2 Activity", id="activity"):
                yield ActivityPanel()
            with TabPane("3 Files", id="files"):
                yield FilesPanel()
            with TabPane("4 Folders", id="folders"):
                yield FoldersPanel()
            with TabPane("5 Conflicts", id="conflicts"):
                yield ConflictsPanel()
            with TabPane("6 Health", id="health"):
                yield HealthPanel()
        yield Footer()

    def on_mount(self) -> None:
        self.start()

    @work(thread=True, exclusive=True, group="start")
    def start(self) -> None:
        """Reach (or start) the node, then poll it every `poll_interval` seconds."""
        try:
            note = self.app.model.ensure_node()
        except errors.PcloudError as exc:
            self.post_message(NodeNotice(f"{exc}"))
            note = None
        if note:
            self.post_message(NodeNotice(note))
        self.poll()
        if self.app.poll_interval:
            self.app.call_from_thread(self.set_interval, self.app.poll_interval, self.poll)

    @work(thread=True, exclusive=True, group="poll")
    def poll(self) -> None:
        self.post_message(SnapshotReady(self.app.model.poll()))

    def action_refresh(self) -> None:
        self.poll()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        pane = self.query_one(f"#{tab}", TabPane)
        for w in pane.query("DataTable, HealthPanel"):
            w.focus()
            break

    @on(SnapshotReady)
    def _show(self, message: SnapshotReady) -> None:
        snap = message.snapshot
        first = self.snapshot is None
        self.snapshot = snap
        h = snap.health
        if snap.node_running:
            mode = "main" if h.has_quorum and not h.local_branch else f"local branch ({h.local_branch or 'no quorum'})"
            line = f" [b]pcloud[/b]  {h.name} · {h.device_id} · {h.role or '—'} · writes → {mode}"
        else:
            line = f" [b]pcloud[/b]  node not running: {snap.error or ''}"
        self.query_one("#status-line", Static).update(line)
        for panel in (DevicesPanel, ActivityPanel, FilesPanel, FoldersPanel, ConflictsPanel, HealthPanel):
            self.query_one(panel).show(snap)
        counts = {"conflicts": len(snap.conflicts)}
        tabs = self.query_one(TabbedContent)
        tabs.get_tab("conflicts").label = f"5 Conflicts ({counts['conflicts']})" if counts["conflicts"] \
            else "5 Conflicts"
        if first:
            self.action_tab(tabs.active)    # focus the panel so its keys show in the footer

    @on(NodeNotice)
    def _notice(self, message: NodeNotice) -> None:
        self.notify(message.text, title="node", timeout=10)

    @on(ActionDone)
    def _done(self, message: ActionDone) -> None:
        self.notify(message.text, severity="information" if message.ok else "warning", timeout=6)
        self.poll()

    # ------------------------------------------------------------ acting (workers; the UI never blocks)

    @work(thread=True, group="act")
    def act(self, done: str, fn, *args: object) -> object:  # type: ignore[no-untyped-def]
        try:
            result = fn(*args)
        except errors.PcloudError as exc:
            self.post_message(ActionDone(f"not done: {exc}", ok=False))
            return None
        self.post_message(ActionDone(done))
        return result

    @on(DevicesPanel.InviteRequested)
    def _invite(self) -> None:
        self.app.push_screen(ChoiceScreen("Invite a device with trust level…", TRUST_LEVELS[1:] + ["owner"]),
                         self._invite_level)

    def _invite_level(self, level: str | None) -> None:
        if level:
            self._make_invite(level)

    @work(thread=True, group="act")
    def _make_invite(self, level: str) -> None:
        try:
            inv = self.app.model.invite(level, 600.0)
        except errors.PcloudError as exc:
            self.post_message(ActionDone(f"no invitation: {exc}", ok=False))
            return
        self.app.call_from_thread(self.app.push_screen, InviteScreen(inv))

    @on(DevicesPanel.TrustRequested)
    def _trust(self, message: DevicesPanel.TrustRequested) -> None:
        d = message.device

        def chosen(level: str | None) -> None:
            if level and level != d.trust:
                self.act(f"{d.name} is now {level}", self.app.model.set_trust, d.key, level)
        self.app.push_screen(ChoiceScreen(f"Trust level for {d.name} (now {d.trust})", TRUST_LEVELS), chosen)

    @on(DevicesPanel.RevokeRequested)
    def _revoke(self, message: DevicesPanel.RevokeRequested) -> None:
        d = message.device
        if d.this_device or d.revoked:
            self.notify("this device cannot revoke itself" if d.this_device else f"{d.name} is already revoked",
                        severity="warning")
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.act(f"revoked {d.name}; the vault key was rotated", self.app.model.revoke, d.key)
        self.app.push_screen(ConfirmScreen(f"Revoke {d.name} ({d.device_id})?\nIt loses access for good and the vault "
                                       "key is rotated."), confirmed)

    @on(ConflictsPanel.Resolve)
    def _resolve(self, message: ConflictsPanel.Resolve) -> None:
        c = message.conflict
        self.act(f"{c.original_path}: {message.how.replace('-', ' ')}", self.app.model.resolve_conflict, c,
                 message.how)

    @on(ConflictsPanel.OpenBoth)
    def _open_both(self, message: ConflictsPanel.OpenBoth) -> None:
        self._load_both(message.conflict)

    @work(thread=True, group="act")
    def _load_both(self, c) -> None:  # type: ignore[no-untyped-def]
        try:
            mine = self.app.model.read(c.original_path, "main") if c.original_exists else b"(deleted on this side)"
            theirs = self.app.model.read(c.copy_path, "main")
        except errors.PcloudError as exc:
            self.post_message(ActionDone(f"cannot open: {exc}", ok=False))
            return
        self.app.call_from_thread(self.app.push_screen, CompareScreen(
            f"{c.original_path} (this side)", mine, f"{c.copy_path} ({c.copy_device[:9]})", theirs))

    @on(FoldersPanel.EditIgnore)
    def _edit_ignore(self, message: FoldersPanel.EditIgnore) -> None:
        f = message.folder

        def saved(text: str | None) -> None:
            if text is not None:
                self.act(f"saved the ignore patterns of {f.dir}", self.app.model.save_ignore, f, text)
        self.app.push_screen(IgnoreScreen(f.dir, f.ignore), saved)

    @on(FoldersPanel.AddFolder)
    def _add_folder(self) -> None:
        def entered(spec: str | None) -> None:
            if spec:
                self.act(f"watching {spec}", self.app.model.add_folder, spec)
        self.app.push_screen(InputScreen("Watch a folder: DIR or DIR=VAULTPATH (kept across restarts)",
                                         "~/Documents=docs"), entered)

    @on(FoldersPanel.RemoveFolder)
    def _remove_folder(self, message: FoldersPanel.RemoveFolder) -> None:
        f = message.folder

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.act(f"stopped watching {f.dir}", self.app.model.remove_folder, f)
        self.app.push_screen(ConfirmScreen(f"Stop watching {f.dir}?\nIts files stay on disk and in the vault."),
                             confirmed)
