"""Events a watched folder reports to its owner (a UI, the node, a test).

Small frozen dataclasses, delivered in order on the syncer's worker thread
through the ``on_event`` callback of `pcloud.folders.FolderSync`. A callback
must be quick and must not call the vault (it runs on the vault's thread,
between two sync steps); hand the event to your own queue if you need more.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Committed:
    """Local changes became one commit on the folder's branch."""

    commit: str
    """The new commit (hex)."""
    changes: int
    """How many paths the commit changed (a rename counts once per path: removed + added)."""
    paths: tuple[str, ...]
    """Folder-relative paths changed, sorted (at most the first 100)."""


@dataclass(frozen=True)
class Applied:
    """Remote changes were written to (or removed from) the local folder."""

    changes: int
    """How many paths were written, removed or renamed on disk."""
    paths: tuple[str, ...]
    """Folder-relative paths touched, sorted (at most the first 100)."""


@dataclass(frozen=True)
class ConflictKept:
    """A path changed on both sides; both versions were kept, no byte lost."""

    path: str
    """Folder-relative path of the local version (it stays there)."""
    copy_path: str | None
    """Where the remote version went (a conflict copy), or None for delete-vs-edit (the edit is at ``path``)."""
    reason: str
    """One human sentence: what happened and where each version is."""


@dataclass(frozen=True)
class SyncProblem:
    """A path could not be synced this time (permission denied, symlink skipped, still being written...).

    Transient problems are retried on later cycles; the syncer never stops for one.
    """

    path: str
    """Folder-relative path ('' for the folder itself)."""
    message: str
    """What went wrong and what the syncer does about it."""
    retrying: bool = True
    """True if the syncer will try this path again by itself."""


@dataclass(frozen=True)
class CycleResult:
    """What one sync cycle (scan + commit + apply) did."""

    committed: str | None
    """The commit made from local changes (hex), or None."""
    local_changes: int
    """Paths committed from the local folder."""
    applied: int
    """Paths written, removed or renamed on disk from the vault."""
    conflicts: tuple[ConflictKept, ...] = ()
    pending: int = 0
    """Paths left for a later cycle (unstable, unreadable, or edited while being applied)."""
    head: str | None = None
    """The branch head the folder is now synced with (hex)."""


FolderEvent = Committed | Applied | ConflictKept | SyncProblem

__all__ = ["Committed", "Applied", "ConflictKept", "SyncProblem", "CycleResult", "FolderEvent"]
