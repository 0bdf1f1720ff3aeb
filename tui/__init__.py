"""tui — the `pcloud` terminal app (textual) for syncing personal devices.

Uses pcloud's public API only. Not built yet: it arrives with issue 6; until
then `pcloud` with no arguments says so and prints the CLI help.
"""
