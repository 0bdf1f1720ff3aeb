"""The `pcloud` terminal app: `make_app(vault_dir)` builds it for the CLI and the tests alike.

    app = make_app(Path("~/vault"))                  # a LiveModel: polls the node, starts one if none runs
    app.run()
    app = make_app(model=FixedModel.load("rec.json")) # a recording (screenshots, snapshot tests)

The app holds the model (``app.model``, UI-free, blocking calls made from
worker threads only) and the main screen; the panels receive each new
`Snapshot` through ``show`` (method calls down) and ask for actions with
messages (up). See tui/model.py for how the node is reached and started.
"""
from __future__ import annotations

import os
from pathlib import Path

from textual.app import App
from textual.binding import Binding

from .model import LiveModel, Model
from .screens.help import HelpScreen
from .screens.main import MainScreen


class PcloudApp(App[None]):
    """Parameters: ``model`` (LiveModel or FixedModel), ``poll_interval`` (seconds; 0 = poll once),
    ``initial_tab`` (devices, activity, files, folders, conflicts, health), ``export_dir`` (where `e` puts files;
    default: the current directory)."""

    CSS_PATH = "pcloud.tcss"
    TITLE = "pcloud"
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
    ]

    def __init__(self, model: Model, *, poll_interval: float = 1.0, initial_tab: str = "devices",
                 export_dir: Path | None = None) -> None:
        super().__init__()
        self.export_dir = export_dir or Path.cwd()
        self.model = model
        self.poll_interval = poll_interval
        self.initial_tab = initial_tab
        self.sub_title = str(model.vault_dir)

    def on_mount(self) -> None:
        self.push_screen(MainScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())


def make_app(vault_dir: str | os.PathLike[str] | None = None, *, model: Model | None = None,
             start_node: bool = True, poll_interval: float = 1.0, initial_tab: str = "devices",
             export_dir: Path | None = None) -> PcloudApp:
    """The app for ``vault_dir`` (a `LiveModel`), or for ``model`` when given (e.g. a `FixedModel`)."""
    if model is None:
        if vault_dir is None:
            raise ValueError("make_app needs vault_dir or model")
        model = LiveModel(Path(vault_dir), start_node=start_node)
    return PcloudApp(model, poll_interval=poll_interval, initial_tab=initial_tab, export_dir=export_dir)
