"""The help screen: every key binding, from the same table the README shows."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: list[tuple[str, str, str]] = [
    ("everywhere", "1 … 6", "Devices, Activity, Files, Folders, Conflicts, Health"),
    ("everywhere", "tab / shift+tab", "move between widgets"),
    ("everywhere", "ctrl+r", "refresh now"),
    ("everywhere", "?", "this help"),
    ("everywhere", "q", "quit (a node the app started keeps running)"),
    ("Devices", "i", "invite a device: one-time code, QR code, expiry countdown"),
    ("Devices", "t", "change the selected device's trust level"),
    ("Devices", "x", "revoke the selected device (asks first)"),
    ("Files", "enter", "open a folder / show a file's versions"),
    ("Files", "backspace", "up one folder"),
    ("Files", "b", "next branch (main, local/…, others)"),
    ("Files", "r", "restore the selected version of the file"),
    ("Files", "e", "export the selected file or folder to the current directory"),
    ("Files", "p", "pin the selected folder (or file): kept on this device as main changes (on-demand devices)"),
    ("Folders", "a / d", "add / remove a watched folder"),
    ("Folders", "g", "edit the folder's ignore patterns"),
    ("Conflicts", "m / t", "keep mine / keep theirs (the other copy is removed)"),
    ("Conflicts", "k", "keep both (the copy gets a plain name)"),
    ("Conflicts", "o", "open both side by side"),
]
"""(where, keys, what): the help screen and the README table are made from this."""


def markdown_table() -> str:
    """KEYS as the README's Markdown table."""
    lines = ["| Where | Keys | What |", "|---|---|---|"]
    lines += [f"| {w} | `{k}` | {d} |" for w, k, d in KEYS]
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        t = Table("Where", "Keys", "What", box=None, padding=(0, 1), expand=True)
        for row in KEYS:
            t.add_row(*row)
        with VerticalScroll(classes="dialog wide"):
            yield Static("pcloud — keys (Esc closes). The mouse works too: click tabs, rows, buttons.",
                         classes="panel-title")
            yield Static(t)
