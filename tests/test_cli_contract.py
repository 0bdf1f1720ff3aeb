"""The CLI matches ../shared/CLI.md: every command listed there exists and has help text."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pcloud.cli import cli

CLI_MD = Path(__file__).resolve().parents[2] / "shared" / "CLI.md"


def _contract_commands() -> set[str]:
    """Command names from the first column of CLI.md's table ("`pcloud rm / mv`", "`pcloud fsck` / `pcloud gc`")."""
    names: set[str] = set()
    for line in CLI_MD.read_text().splitlines():
        cells = line.split("|")
        if len(cells) < 3 or "pcloud" not in cells[1]:
            continue
        for piece in cells[1].replace("`", "").split(" / "):
            words = piece.split()
            if words and words[0] == "pcloud":
                words = words[1:]
            if words and re.fullmatch(r"[a-z]+", words[0]):
                names.add(words[0])
    return names


@pytest.mark.skipif(not CLI_MD.exists(), reason="shared/CLI.md not beside the repository")
def test_every_contract_command_exists_with_help():
    names = _contract_commands()
    assert {"init", "put", "get", "ls", "rm", "mv", "log", "branch", "merge", "diff", "doc", "fsck", "gc",
            "serve", "relay", "invite", "join", "devices", "trust", "revoke", "status", "demo"} <= names
    for name in names:
        assert name in cli.commands, f"pcloud {name} is in CLI.md but not in the CLI"
        assert cli.commands[name].help, f"pcloud {name} has no help text"


def test_every_command_accepts_common_options():
    runner = CliRunner()
    for name, cmd in cli.commands.items():
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, name
        for opt in ("--vault", "--json", "--verbose"):
            assert opt in res.output, f"pcloud {name} lacks {opt}"
