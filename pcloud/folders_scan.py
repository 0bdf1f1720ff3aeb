"""Scanning a watched folder: which regular files exist now, with their stat.

A scan reads directories and ``lstat``s entries; it never reads file content
(the engine hashes only files whose stat differs from the synced record, the
stat-cache idea of git's index). Two shapes:

* `Scanner.scan_all` walks the whole folder (start, watcher overflow, periodic safety rescan);
* `Scanner.scan_paths` looks only at the paths the watcher reported (and below them
  when they are directories).

Invariants:
* Only regular files whose every path component is a valid, NFC vault name
  are reported; symlinks, sockets, fifos, devices and unrepresentable names
  are skipped with one log line per path (not once per scan).
* Ignored paths (`pcloud.ignore`) are never reported, and ignored directories
  are not entered.
* A directory that cannot be read is reported in ``blind``: the engine must not
  take the files it cannot see there for deleted.
"""
from __future__ import annotations

import logging
import os
import stat as stat_mod
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from .errors import BadPath
from .ignore import TEMP_SUFFIX, IgnoreRules
from .store import paths

log = logging.getLogger("pcloud.folders")


class FileStat(NamedTuple):
    """The part of an lstat a scan keeps (a quarter of an os.stat_result's memory; 100k of them are held)."""

    st_size: int
    st_mtime_ns: int
    st_ino: int
    st_mode: int

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_mode)


@dataclass
class ScanResult:
    """Files seen by a scan.

    ``files`` maps each seen folder-relative path to its lstat. ``looked``
    lists the paths (and directory prefixes) the scan covered: a synced file
    under a looked-at prefix that is absent from ``files`` was deleted.
    """

    files: dict[str, FileStat] = field(default_factory=dict)
    full: bool = False
    """True when the whole folder was scanned (every synced file not in ``files`` is gone)."""
    looked: set[str] = field(default_factory=set)
    """For partial scans: the paths examined; a synced path equal to or below one of them and not in ``files`` is gone."""
    blind: set[str] = field(default_factory=set)
    """Directories that could not be read: nothing below them may be taken as deleted."""
    temps: list[str] = field(default_factory=list)
    """Our own ``.*.pcloud-tmp`` files seen (left by a killed syncer when found at start)."""


def to_local(root: str, rel: str) -> str:
    """The local path of folder-relative ``rel`` under ``root``."""
    return os.path.join(root, *rel.split("/")) if rel else root


def valid_name(name: str) -> bool:
    """True if ``name`` can be stored in the vault unchanged (valid and already NFC)."""
    if name.isascii() and "\\" not in name and len(name) <= 255 and name not in (".", "..") and name.isprintable():
        return True  # the common case, without the Unicode work below
    try:
        paths.check_name(name)
    except BadPath:
        return False
    return unicodedata.is_normalized("NFC", name)


class Scanner:
    """Scans folder ``root`` under ``rules``; ``report(path, message)`` is told about skipped paths once each."""

    def __init__(self, root: str, rules: IgnoreRules, report: Callable[[str, str], None]) -> None:
        self.root = root
        self.rules = rules
        self._report = report
        self._reported: set[tuple[str, str]] = set()

    def _skip(self, rel: str, why: str) -> None:
        if (rel, why) not in self._reported:
            self._reported.add((rel, why))
            log.info("folder %s: skipping %s: %s", self.root, rel, why)
            self._report(rel, why)

    def scan_all(self) -> ScanResult:
        res = ScanResult(full=True)
        self._walk("", res)
        return res

    def scan_paths(self, rels: set[str]) -> ScanResult:
        """Look at each of ``rels`` (files or directories, present or gone); ancestors are checked for ignores."""
        res = ScanResult()
        for rel in sorted(rels):
            if not rel:
                return self.scan_all()
            if self.rules.ignored(rel) and self.rules.ignored(rel, is_dir=True):
                continue
            res.looked.add(rel)
            try:
                st = os.lstat(to_local(self.root, rel))
            except FileNotFoundError:
                continue
            except NotADirectoryError:
                continue  # a parent became a file: nothing at rel
            except OSError as exc:
                res.blind.add(rel)
                self._skip(rel, f"cannot stat ({exc.strerror}); will retry")
                continue
            self._classify(rel, st, res)
        return res

    def _classify(self, rel: str, st: os.stat_result, res: ScanResult) -> None:
        if not all(valid_name(n) for n in rel.split("/")):
            self._skip(rel, "the name cannot be stored in the vault (not NFC, backslash, or too long)")
            return
        if stat_mod.S_ISDIR(st.st_mode):
            if not self.rules.ignored(rel, is_dir=True):
                self._walk(rel, res)
        elif stat_mod.S_ISREG(st.st_mode):
            if not self.rules.ignored(rel):
                res.files[rel] = FileStat.of(st)
        elif stat_mod.S_ISLNK(st.st_mode):
            self._skip(rel, "symbolic links are not synced")
        else:
            self._skip(rel, "special files (fifo, socket, device) are not synced")

    def _walk(self, top: str, res: ScanResult) -> None:
        stack = [top]
        rules = self.rules
        while stack:
            rel_dir = stack.pop()
            try:
                it = os.scandir(to_local(self.root, rel_dir))
            except FileNotFoundError:
                continue
            except OSError as exc:
                res.blind.add(rel_dir)
                self._skip(rel_dir, f"cannot read directory ({exc.strerror}); will retry")
                continue
            with it:
                for e in it:
                    name = e.name
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    try:
                        st = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        res.blind.add(rel)
                        self._skip(rel, f"cannot stat ({exc.strerror}); will retry")
                        continue
                    mode = st.st_mode
                    if stat_mod.S_ISREG(mode):
                        if rules.ignored_here(rel):
                            if name.endswith(TEMP_SUFFIX) and name.startswith("."):
                                res.temps.append(rel)
                            continue
                    elif stat_mod.S_ISDIR(mode):
                        if rules.ignored_here(rel, True):
                            continue
                    elif stat_mod.S_ISLNK(mode):
                        if not rules.ignored_here(rel):
                            self._skip(rel, "symbolic links are not synced")
                        continue
                    else:
                        if not rules.ignored_here(rel):
                            self._skip(rel, "special files (fifo, socket, device) are not synced")
                        continue
                    if not valid_name(name):
                        self._skip(rel, "the name cannot be stored in the vault (not NFC, backslash, or too long)")
                        continue
                    if stat_mod.S_ISDIR(mode):
                        stack.append(rel)
                    else:
                        res.files[rel] = FileStat(st.st_size, st.st_mtime_ns, st.st_ino, mode)


def covered(rel: str, res: ScanResult) -> bool:
    """True if the scan looked at ``rel`` and could see it (so its absence from ``files`` means deleted)."""
    if any(rel == b or rel.startswith(b + "/") for b in res.blind):
        return False
    if res.full:
        return True
    if rel in res.looked:
        return True
    parts = rel.split("/")
    return any("/".join(parts[:k]) in res.looked for k in range(1, len(parts)))


__all__ = ["Scanner", "ScanResult", "FileStat", "to_local", "valid_name", "covered"]
