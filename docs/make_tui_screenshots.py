"""Regenerate the README's screenshots of the terminal app (SVG, exported by textual) from the test recording.

    .venv/bin/python docs/make_tui_screenshots.py

Uses tests/data/tui_recording.json (a fixed four-device vault), so the
pictures change only when the app's looks change.
"""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tui.app import make_app  # noqa: E402
from tui.model import FixedModel  # noqa: E402

SHOTS = [("devices", "tui-devices.svg"), ("activity", "tui-activity.svg"), ("conflicts", "tui-conflicts.svg")]


async def shoot(tab: str, out: Path, size: tuple[int, int] = (100, 28)) -> None:
    app = make_app(model=FixedModel.load(REPO / "tests" / "data" / "tui_recording.json"), poll_interval=0,
                   initial_tab=tab)
    async with app.run_test(size=size) as pilot:
        for _ in range(100):
            if app.screen.snapshot is not None:
                break
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        app.save_screenshot(str(out.name), str(out.parent))


def main() -> None:
    for tab, name in SHOTS:
        asyncio.run(shoot(tab, REPO / "docs" / name))
        print("wrote", REPO / "docs" / name)


if __name__ == "__main__":
    main()
