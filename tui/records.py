"""What the terminal app shows, as small frozen dataclasses (no textual, no I/O).

`Snapshot` is one look at the node and the vault; it round-trips through JSON
(``to_json`` / ``from_json``) so a recording can replace the live node
(`tui.model.FixedModel`).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

CONFLICT_RE = re.compile(r"^(?P<stem>.*)\.conflict-(?P<device>[A-Z0-9-]+?)-(?P<stamp>\d{8}-\d{6})(?:-\d+)?(?P<ext>\.[^./]*)?$")
"""``stem.conflict-<device>-<yyyymmdd-hhmmss>[-n].ext`` (pcloud.store.merge.conflict_name)."""




@dataclass(frozen=True)
class DeviceRow:
    """One device of the vault as the Devices panel shows it."""

    device_id: str
    key: str
    name: str
    trust: str
    voter: bool
    policy: str
    online: bool
    revoked: bool
    this_device: bool = False
    path: str | None = None
    "lan / direct / relay, when a session is up"
    rtt_ms: float | None = None
    last_seen: float | None = None
    "wall-clock seconds this app last saw it online (None: not while the app ran)"


@dataclass(frozen=True)
class PeerTransfer:
    """What one peer sent us: totals since the node started and the rate over the last poll."""

    device_id: str
    name: str
    objects: int
    bytes: int
    rate_bps: float = 0.0


@dataclass(frozen=True)
class SyncState:
    wanted_objects: int = 0
    wanted_bytes: int = 0
    stored_objects: int = 0
    running: bool = False
    peers: tuple[PeerTransfer, ...] = ()

    @property
    def rate_bps(self) -> float:
        return sum(p.rate_bps for p in self.peers)

    @property
    def remaining_s(self) -> float | None:
        """Seconds left at the current rate (None: nothing moving, or nothing wanted)."""
        if not self.wanted_bytes:
            return 0.0
        return self.wanted_bytes / self.rate_bps if self.rate_bps > 0 else None

    @property
    def fraction(self) -> float:
        got = sum(p.bytes for p in self.peers)
        total = got + self.wanted_bytes
        return 1.0 if total == 0 else got / total


@dataclass(frozen=True)
class ChangeRow:
    """One path changed by one commit of ``main`` (the activity log)."""

    commit: str
    time_ns: int
    device: str
    device_name: str
    kind: str
    path: str
    old_path: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Health:
    device_id: str = ""
    name: str = ""
    role: str | None = None
    leader: str | None = None
    leader_name: str | None = None
    has_quorum: bool = False
    main: str | None = None
    local_branch: str | None = None
    "set when writes are going to this device's local branch (no Raft majority)"
    policy: str = ""
    address: str = ""
    cloud: tuple[tuple[str, bool, str | None], ...] = ()
    "(name, online, path) of every storage (cloud) device"
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class FolderRow:
    dir: str
    vault_path: str
    committed: int
    applied: int
    scanned: bool
    ignore: str = ""
    "the folder's .pcloudignore text"


@dataclass(frozen=True)
class ConflictRow:
    """A conflict copy in ``main`` and the file it conflicts with."""

    copy_path: str
    original_path: str
    copy_device: str
    copy_time: str
    "yyyy-mm-dd hh:mm:ss UTC of the other side's commit"
    original_device: str = ""
    original_time_ns: int = 0
    original_exists: bool = True


@dataclass(frozen=True)
class Version:
    """A commit that changed a file (its history)."""

    commit: str
    time_ns: int
    device: str
    message: str
    size: int


@dataclass(frozen=True)
class Invitation:
    code: str
    expires_at: float
    trust: str
    qr: str


@dataclass(frozen=True)
class Snapshot:
    """Everything the panels show, taken at one moment."""

    taken_at: float
    vault_dir: str
    node_running: bool
    devices: tuple[DeviceRow, ...] = ()
    sync: SyncState = field(default_factory=SyncState)
    changes: tuple[ChangeRow, ...] = ()
    health: Health = field(default_factory=Health)
    folders: tuple[FolderRow, ...] = ()
    conflicts: tuple[ConflictRow, ...] = ()
    branches: tuple[str, ...] = ("main",)
    error: str | None = None
    "why the last poll failed (the snapshot then holds what was known before)"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Snapshot":
        sync = d.get("sync", {})
        return cls(
            taken_at=d["taken_at"], vault_dir=d["vault_dir"], node_running=d["node_running"],
            devices=tuple(DeviceRow(**x) for x in d.get("devices", ())),
            sync=SyncState(**{**sync, "peers": tuple(PeerTransfer(**p) for p in sync.get("peers", ()))}),
            changes=tuple(ChangeRow(**x) for x in d.get("changes", ())),
            health=Health(**{**d.get("health", {}),
                             "cloud": tuple(tuple(c) for c in d.get("health", {}).get("cloud", ())),
                             "notices": tuple(d.get("health", {}).get("notices", ()))}),
            folders=tuple(FolderRow(**x) for x in d.get("folders", ())),
            conflicts=tuple(ConflictRow(**x) for x in d.get("conflicts", ())),
            branches=tuple(d.get("branches", ("main",))), error=d.get("error"))


def parse_conflict(path: str) -> tuple[str, str, str] | None:
    """``dir/a.conflict-DEV-20261122-101500.txt`` -> (original path, device, 'yyyy-mm-dd hh:mm:ss')."""
    head, _, name = path.rpartition("/")
    m = CONFLICT_RE.match(name)
    if m is None or not m.group("stem"):
        return None
    original = m.group("stem") + (m.group("ext") or "")
    s = m.group("stamp")
    when = f"{s[0:4]}-{s[4:6]}-{s[6:8]} {s[9:11]}:{s[11:13]}:{s[13:15]}"
    return (f"{head}/{original}" if head else original), m.group("device"), when


def kept_name(row: ConflictRow) -> str:
    """Where "keep both" puts the conflict copy: ``stem (DEVICE yyyy-mm-dd hhmmss).ext`` next to the original."""
    head, _, name = row.original_path.rpartition("/")
    dot = name.rfind(".")
    stem, ext = (name[:dot], name[dot:]) if dot > 0 else (name, "")
    new = f"{stem} ({row.copy_device[:4]} {row.copy_time.replace(':', '')}){ext}"
    return f"{head}/{new}" if head else new
