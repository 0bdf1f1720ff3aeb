"""Records the public API returns: small frozen dataclasses, JSON-ready via `to_json()`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone


def _iso(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, tz=timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Entry:
    """One path in the vault as `ls`/`stat` see it."""

    path: str
    kind: str  # "file" | "dir" | "doc"
    size: int
    mtime_ns: int = 0
    id: str = ""  # object id (hex) of the blob, tree or doc state

    def to_json(self) -> dict:
        return {"path": self.path, "kind": self.kind, "size": self.size,
                "mtime": _iso(self.mtime_ns) if self.mtime_ns else None, "id": self.id}


@dataclass(frozen=True)
class CommitInfo:
    """One commit of a branch's history."""

    commit: str  # hex id
    message: str
    device: str  # short device id of the author
    time_ns: int
    parents: tuple[str, ...] = ()

    @property
    def time(self) -> str:
        return _iso(self.time_ns)

    def to_json(self) -> dict:
        return {"commit": self.commit, "message": self.message, "device": self.device,
                "time": self.time, "parents": list(self.parents)}


@dataclass(frozen=True)
class WriteResult:
    """What a put/import did: the commit it made (None when nothing changed)."""

    commit: str | None
    files: int
    bytes: int
    unchanged: int = 0

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ExportResult:
    files: int
    bytes: int

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ConflictInfo:
    """A path both sides changed; `copy_path` holds the other side's version."""

    path: str
    copy_path: str | None
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MergeOutcome:
    """A merge's result: the commit now at the target, and the conflicts it kept both sides of."""

    commit: str
    fast_forward: bool
    conflicts: tuple[ConflictInfo, ...] = ()

    def to_json(self) -> dict:
        return {"commit": self.commit, "fast_forward": self.fast_forward,
                "conflicts": [c.to_json() for c in self.conflicts]}


@dataclass(frozen=True)
class ChangeInfo:
    """One line of a diff."""

    kind: str  # "added" | "removed" | "modified" | "renamed"
    path: str
    old_path: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FsckResult:
    ok: bool
    objects: int
    errors: tuple[tuple[str, str], ...] = ()
    missing_content: int = 0
    """On-demand devices: chunks of files not fetched here (expected, not errors)."""

    def to_json(self) -> dict:
        return {"ok": self.ok, "objects": self.objects,
                "errors": [{"object": o, "reason": r} for o, r in self.errors],
                "missing_content": self.missing_content}


@dataclass(frozen=True)
class GcResult:
    ok: bool
    objects: int
    removed: int
    errors: tuple[tuple[str, str], ...] = ()
    evicted: int = 0
    """On-demand devices: chunks of unpinned files dropped (another replica holds them; fetched on open)."""

    def to_json(self) -> dict:
        return {"ok": self.ok, "objects": self.objects, "removed": self.removed,
                "errors": [{"object": o, "reason": r} for o, r in self.errors], "evicted": self.evicted}


@dataclass(frozen=True)
class VaultStatus:
    device_id: str
    device_name: str
    vault_id: str
    branch: str
    main: str | None
    branches: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)
