"""Modal dialogs: invitation (code, QR, countdown), confirmation, trust level, both sides of a conflict, ignore file."""
from __future__ import annotations

import time

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea

from ..model import Invitation


class InviteScreen(ModalScreen[None]):
    """Shows a one-time code, its QR code and the time left; Esc closes."""

    BINDINGS = [Binding("escape", "dismiss", "Close")]

    def __init__(self, invitation: Invitation, clock=time.time) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.invitation = invitation
        self.clock = clock

    def compose(self) -> ComposeResult:
        inv = self.invitation
        with VerticalScroll(classes="dialog", id="invite-dialog"):
            with Horizontal(id="invite-body"):
                with Vertical(id="invite-text"):
                    yield Label(f"Invitation for a [b]{inv.trust}[/b] device", classes="panel-title")
                    yield Static(inv.code, id="invite-code")
                    yield Static("", id="invite-expiry")
                    yield Static(f"On the new device:\n[b]pcloud join {inv.code}[/b]\nor scan the QR code with the "
                                 "phone app.", id="invite-how")
                    yield Button("Close", id="close", variant="primary")
                yield Static(inv.qr, id="invite-qr", markup=False)

    def on_mount(self) -> None:
        self._tick()
        self.set_interval(1.0, self._tick)

    def _tick(self) -> None:
        left = int(self.invitation.expires_at - self.clock())
        text = "expired" if left <= 0 else f"expires in {left // 60}:{left % 60:02d}"
        self.query_one("#invite-expiry", Static).update(text)

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no; y or Enter confirms, n or Esc cancels."""

    BINDINGS = [Binding("y", "answer(True)", "Yes"), Binding("n,escape", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no", variant="primary")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")


class ChoiceScreen(ModalScreen[str | None]):
    """Pick one of ``choices`` (e.g. a trust level); Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, choices: list[str]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="panel-title")
            yield OptionList(*self.choices, id="choices")

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.choices[event.option_index])


class InputScreen(ModalScreen[str | None]):
    """One line of text; Enter submits, Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, placeholder: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.title_text, classes="panel-title")
            yield Input(placeholder=self.placeholder, id="line")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)


class CompareScreen(ModalScreen[None]):
    """Both sides of a conflict next to each other (text, first 64 KiB)."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, left_title: str, left: bytes, right_title: str, right: bytes) -> None:
        super().__init__()
        self.sides = [(left_title, left), (right_title, right)]

    def compose(self) -> ComposeResult:
        with Horizontal(classes="dialog wide", id="compare"):
            for title, data in self.sides:
                with Vertical():
                    yield Static(title, classes="panel-title")
                    yield TextArea(_text(data), read_only=True)


class IgnoreScreen(ModalScreen[str | None]):
    """Edit a folder's .pcloudignore; ctrl+s saves, Esc cancels."""

    BINDINGS = [Binding("ctrl+s", "save", "Save"), Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, folder: str, text: str) -> None:
        super().__init__()
        self.folder = folder
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide"):
            yield Static(f"Ignore patterns for {self.folder} (gitignore syntax) — ctrl+s saves", classes="panel-title")
            yield TextArea(self.text, id="ignore-edit")

    def action_save(self) -> None:
        self.dismiss(self.query_one(TextArea).text)


def _text(data: bytes) -> str:
    if b"\0" in data[:4096]:
        return f"(binary, {len(data)} bytes shown)"
    return data.decode("utf-8", errors="replace")
