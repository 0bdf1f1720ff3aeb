"""Watched folders added and removed while the node runs (control ops ``folders``, ``folder_add``, ``folder_remove``).

Invariants
----------
* A folder added here is kept in ``<vault>/folders.json`` (a JSON list of
  ``DIR=VAULTPATH`` specs with absolute DIRs), so the node watches it again
  after a restart; folders from the node's config (``pcloud serve --folder``)
  are not in that file and cannot be removed here (they would come back at the
  next start): the answer says to restart without them.
* One folder is watched at most once: adding a directory already watched
  (same real path) is refused with BadArgument.
* Removing stops the folder's watcher and closes its vault handle before
  answering; the files on disk and in the vault are left as they are.

The CLI (`pcloud folders`) and the terminal app use these ops; nothing else
reaches a running node's folders.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from . import errors
from .jsonlist import read_string_list, write_string_list
from .folders import parse_folder_spec

log = logging.getLogger("pcloud.folders_live")

FOLDERS_FILE = "folders.json"
MAX_FOLDERS_FILE = 1 << 20


def read_added(vault_dir: Path) -> list[str]:
    """The specs in ``folders.json`` ([] when there is none); BadArgument if it is not a list of strings."""
    return read_string_list(vault_dir / FOLDERS_FILE, MAX_FOLDERS_FILE, "'DIR=VAULTPATH' strings")


def _write_added(vault_dir: Path, specs: list[str]) -> None:
    write_string_list(vault_dir / FOLDERS_FILE, specs)


class LiveFolders:
    """The three control ops on a started ``pcloud.node.Node`` (which owns ``folders`` and ``_run_folders``)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.dir = Path(node.dir)
        self._lock = asyncio.Lock()

    def start_saved(self) -> None:
        """Watch the folders added by earlier runs (a bad entry is logged and skipped, never fatal)."""
        specs = []
        try:
            saved = read_added(self.dir)
        except errors.PcloudError as exc:
            log.error("ignoring %s: %s", FOLDERS_FILE, exc)
            return
        for spec in saved:
            try:
                specs.append(parse_folder_spec(spec))
            except errors.PcloudError as exc:
                log.error("ignoring folder %r from %s: %s", spec, FOLDERS_FILE, exc)
        if specs:
            self.node._spawn(self.node._run_folders(specs))

    def _configured(self) -> set[str]:
        return {os.path.realpath(parse_folder_spec(s)[0]) for s in self.node.config.folders}

    async def op_folders(self, req: dict[str, Any]) -> dict[str, Any]:
        configured = self._configured()
        return {"folders": [fs.summary() | {"from_config": fs.root in configured} for fs in self.node.folders]}

    async def op_add(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.node.keyring is None:
            raise errors.BadArgument("a cloud node (no vault key) cannot watch folders")
        local, vpath = parse_folder_spec(str(req["spec"]))
        root = os.path.realpath(local)
        async with self._lock:
            saved = read_added(self.dir)
            watched = {fs.root for fs in self.node.folders} | self._configured() | {
                os.path.realpath(parse_folder_spec(s)[0]) for s in saved}
            if root in watched:
                raise errors.BadArgument(f"{root} is already a watched folder")
            _write_added(self.dir, saved + [f"{root}={vpath}"])
        if self.node._mirror() is None:
            # no main here yet (a device that just joined): it starts once main has arrived
            self.node._spawn(self.node._run_folders([(root, vpath)]))
            return {"dir": root, "vault_path": vpath, "pending": True}
        await self.node._run_folders([(root, vpath)])
        log.info("folder added: %s as %s/", root, vpath)
        return {"dir": root, "vault_path": vpath, "pending": False}

    async def op_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        root = os.path.realpath(os.path.expanduser(str(req["dir"])))
        if root in self._configured():
            raise errors.BadArgument(f"{root} is watched because the node was started with --folder (or its "
                                     "config file); restart the node without it")
        async with self._lock:
            saved = read_added(self.dir)
            keep = [s for s in saved if os.path.realpath(parse_folder_spec(s)[0]) != root]
            running = [fs for fs in self.node.folders if fs.root == root]
            if len(keep) == len(saved) and not running:
                raise errors.NotFound(f"{root} is not a watched folder")
            _write_added(self.dir, keep)
            for fs in running:
                self.node.folders.remove(fs)
                def stop(fs: Any = fs) -> None:
                    fs.stop()
                    fs.vault.close()          # only after stop: the watcher thread uses it until then
                await asyncio.get_running_loop().run_in_executor(None, stop)
        log.info("folder removed: %s", root)
        return {"dir": root}


def attach(node: Any) -> LiveFolders:
    """Register the folder ops on ``node`` and start the saved folders; call from ``Node.start``."""
    live = LiveFolders(node)
    node.add_handler("folders", live.op_folders)
    node.add_handler("folder_add", live.op_add)
    node.add_handler("folder_remove", live.op_remove)
    if node.keyring is not None:
        live.start_saved()
    return live
