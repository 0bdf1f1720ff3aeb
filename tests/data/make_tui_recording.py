"""Build tests/data/tui_recording.json: a fixed four-device vault for snapshot tests and the README screenshot."""
import hashlib, json, sys
from pathlib import Path
OUT = Path(__file__).with_name("tui_recording.json")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dataclasses import asdict
from pcloud.identity import short_id_of
from tui.model import *
from pcloud.records import Entry
T = 1795300000.0
def key(n): return hashlib.sha256(n.encode()).hexdigest()
names = ["laptop", "desktop", "phone", "cloud"]
ids = {n: short_id_of(bytes.fromhex(key(n))) for n in names}
devices = (
    DeviceRow(ids["laptop"], key("laptop"), "laptop", "owner", True, "full", True, False, True, None, None, T),
    DeviceRow(ids["desktop"], key("desktop"), "desktop", "member", True, "full", True, False, False, "lan", 0.42, T),
    DeviceRow(ids["phone"], key("phone"), "phone", "member", False, "on-demand", False, False, False, None, None, T - 1260),
    DeviceRow(ids["cloud"], key("cloud"), "cloud", "storage", True, "archive", True, False, False, "direct", 18.7, T),
    DeviceRow(short_id_of(bytes.fromhex(key("old"))), key("old"), "old-tablet", "reader", False, "on-demand", False, True),
)
sync = SyncState(412, 96_000_000, 1630, True, (
    PeerTransfer(ids["desktop"], "desktop", 1630, 201_000_000, 41_500_000.0),
    PeerTransfer(ids["cloud"], "cloud", 220, 12_400_000, 2_100_000.0)))
def ch(i, dev, kind, path, old=None, msg=""):
    return ChangeRow(hashlib.sha256(f"c{i}".encode()).hexdigest(), int((T - 60 * i) * 1e9), ids[dev], dev, kind, path, old, msg or f"{kind} {path}")
changes = (ch(1, "desktop", "modified", "notes/today.md"), ch(2, "desktop", "added", "photos/2026/beach.jpg"),
           ch(3, "phone", "added", "notes/today.conflict-%s-20261122-094000.md" % ids["phone"]),
           ch(5, "laptop", "renamed", "work/report-final.pdf", "work/report.pdf"),
           ch(9, "cloud", "removed", "tmp/scratch.txt"), ch(14, "laptop", "added", "work/budget.ods"))
health = Health(ids["laptop"], "laptop", "leader", ids["laptop"], "laptop", True, hashlib.sha256(b"c1").hexdigest(), None,
                "full", "127.0.0.1:40110", (("cloud", True, "direct"),), ("merged local/abcd1234 into main (3f2a9c1e0b7d)",))
folders = (FolderRow("/home/ana/Documents", "docs", 1204, 388, True, "*.tmp\n.cache/\nnode_modules/\n"),
           FolderRow("/home/ana/Pictures", "photos", 96, 2011, False, ""))
conflicts = (ConflictRow("notes/today.conflict-%s-20261122-094000.md" % ids["phone"], "notes/today.md", ids["phone"],
                         "2026-11-22 09:40:00", ids["desktop"], int((T - 60) * 1e9), True),)
snap = Snapshot(T, "/home/ana/.local/share/pcloud", True, devices, sync, changes, health, folders, conflicts,
                ("main", "local/abcd1234", "drafts"))
d = snap.to_json()
d["files"] = {"": [asdict(Entry("notes", "dir", 0)), asdict(Entry("photos", "dir", 0)), asdict(Entry("work", "dir", 0)),
                   asdict(Entry("README.md", "file", 2210)), asdict(Entry("todo.doc", "doc", 512))]}
open(str(OUT), "w").write(json.dumps(d, indent=1) + "\n")
assert FixedModel.load(str(OUT)).snapshot == snap
