"""The Vault: pcloud's public API for one device's copy of a vault.

    >>> import pcloud
    >>> v = pcloud.Vault.create("/tmp/v", name="laptop")
    >>> v.write("notes/todo.txt", b"buy milk").commit        # one commit per call
    >>> with v.commit("import photos") as tx:                  # many writes, one commit
    ...     tx.write("photos/a.jpg", open("a.jpg", "rb"))
    ...     tx.remove("old.txt")
    >>> v.read("notes/todo.txt")
    b'buy milk'

Theory of operation
-------------------
* Every change is a list of tree edits (`_Op`) applied to the head of the
  current branch, producing a new root tree and a signed commit; the branch
  then moves by compare-and-swap through `Refs` (today a local SQLite table;
  for `main` the Raft-backed table replaces it). A lost CAS replays the same
  edits on the new head, so concurrent writers never drop each other's work.
* File bytes are stored (chunked, sealed) before the commit that names them,
  and the branch moves last: a process killed at any instant leaves at worst
  unreferenced objects, which `gc` removes.
* The API is synchronous: the store is local SQLite and pack files, so every
  call is blocking disk work. `pcloud.AsyncVault` is the async twin with the
  same names, running each call on one dedicated thread.
* A Vault object is meant for one thread at a time (like a sqlite3
  connection); use AsyncVault or one Vault per thread.
"""
from __future__ import annotations

import io
import json
import os
import secrets
import stat as stat_mod
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union

import platformdirs

from consensus.commands import Genesis

from . import control, errors
from .identity import DeviceIdentity
from .localindex import LocalIndex, StatKey
from .records import (ChangeInfo, CommitInfo, ConflictInfo, Entry, ExportResult, FsckResult,
                      GcResult, MergeOutcome, VaultStatus, WriteResult)
from .store import diff as diff_mod
from .store import history, merge as merge_mod, paths, trees
from .store.crypto import Keyring
from .livedoc import LiveDocument
from .store.documents import Document, merge_doc_objects
from .store.objects import Blob, Commit, Doc, EntryKind, ObjectId, Tree, TreeEntry
from .store.objectstore import ObjectStore
from .store.refs import Refs

VAULT_FORMAT = 1
MAIN = "main"
META_FILE = "vault.json"
KEYRING_FILE = "keyring.sealed"
GENESIS_FILE = "genesis.bin"

Data = Union[bytes, bytearray, memoryview, str, BinaryIO, os.PathLike]
Progress = Callable[[int, int], None]  # (files done, bytes done)


def default_vault_dir() -> Path:
    """`$PCLOUD_VAULT`, else the platform's user data dir (e.g. ~/.local/share/pcloud/vault)."""
    env = os.environ.get("PCLOUD_VAULT")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("pcloud")) / "vault"


def _hex(oid: bytes | None) -> str | None:
    return oid.hex() if oid is not None else None


class _ClassOrInstance:
    """A name that is a classmethod on the class and a method on instances.

    Lets `Vault.open(dir)` (open a vault) and `vault.open(path)` (open a file
    in it) both read naturally, as the API promises.
    """

    def __init__(self, class_fn: str, instance_fn: str) -> None:
        self._class_fn, self._instance_fn = class_fn, instance_fn

    def __get__(self, obj: object, owner: type) -> Callable:
        if obj is None:
            return getattr(owner, self._class_fn)
        return getattr(obj, self._instance_fn)


@dataclass(frozen=True)
class _Op:
    """One tree edit: set a path to an entry, remove a path, or move one."""

    kind: str  # "set" | "remove" | "move"
    path: str
    entry: TreeEntry | None = None
    dest: str | None = None


class Transaction:
    """Edits collected by `Vault.commit(message)`; applied as one commit on exit.

    Methods mirror the Vault's write methods. After the `with` block,
    `result` holds the CommitInfo (None when nothing changed).
    """

    def __init__(self, vault: "Vault", message: str) -> None:
        self._vault = vault
        self.message = message
        self.ops: list[_Op] = []
        self.files = 0
        self.bytes = 0
        self.result: CommitInfo | None = None

    def write(self, path: str, data: Data, *, mode: int | None = None, mtime_ns: int | None = None) -> None:
        entry = self._vault._store_file(paths.normalize(path), data, mode, mtime_ns)
        self.ops.append(_Op("set", paths.normalize(path), entry))
        self.files += 1
        self.bytes += entry.size

    def remove(self, path: str) -> None:
        self.ops.append(_Op("remove", self._vault._require(path)))

    def move(self, src: str, dst: str) -> None:
        self.ops.append(_Op("move", self._vault._require(src), dest=paths.normalize(dst)))

    def set_entry(self, path: str, entry: TreeEntry) -> None:
        self.ops.append(_Op("set", paths.normalize(path), entry))

    def remove_entry(self, path: str) -> None:
        """Remove ``path`` when the commit is applied, without checking the current head first.

        For `Vault.commit_at`, whose edits apply to a given head, not the
        current one: the caller has checked ``path`` exists there (NotFound
        is raised at the end of the block otherwise).
        """
        self.ops.append(_Op("remove", paths.normalize(path)))


class Vault:
    """One device's copy of a vault: files, documents, branches and history.

    Open with `Vault.open(dir)` or make one with `Vault.create(dir)`; close
    with `close()` or use it as a context manager. Raises `pcloud.errors`
    types: NotAVault, WrongKey, BadPath, NotFound, CorruptObject, StorageFull.
    """

    def __init__(self, path: Path, identity: DeviceIdentity, keyring: Keyring, store: ObjectStore,
                 refs: Refs, index: LocalIndex, meta: dict) -> None:
        self.path = path
        self.identity = identity
        self.keyring = keyring
        self.store = store
        self.refs = refs
        self.index = index
        self._meta = meta
        self._tx: Transaction | None = None
        self._closed = False
        self._control: control.ControlClient | None = None
        self._live_docs: list[LiveDocument] = []

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def create(cls, path: str | os.PathLike | None = None, *, name: str | None = None) -> "Vault":
        """Make a new vault in `path` (created if missing) with this device as its owner."""
        p = Path(path) if path is not None else default_vault_dir()
        if (p / META_FILE).exists():
            raise errors.VaultExists(f"{p} already holds a pcloud vault")
        if p.exists() and not p.is_dir():
            raise errors.BadArgument(f"{p} exists and is not a directory")
        p.mkdir(parents=True, exist_ok=True)
        # An init killed part-way left some of these behind (vault.json comes last): reuse them,
        # so running init again finishes the job instead of failing on "already exists".
        identity = DeviceIdentity.load_or_create(p)
        if (p / KEYRING_FILE).exists():
            keyring = identity.load_keyring(p / KEYRING_FILE)
        else:
            keyring = Keyring.generate()
            identity.save_keyring(p / KEYRING_FILE, keyring)
        if (p / "store" / "index.sqlite").exists():
            store = ObjectStore.open(p / "store", keyring)
        else:
            store = ObjectStore.create(p / "store", keyring)
        meta = {
            "format": VAULT_FORMAT,
            "vault_id": secrets.token_hex(16),
            "device_name": name or os.uname().nodename,
            "created_ns": time.time_ns(),
        }
        vault = cls(p, identity, keyring, store, store.refs, LocalIndex(p / "index.db"), meta)
        # The vault's Raft genesis (first owner, self-signed): every node of this vault starts from it.
        genesis = Genesis.create(identity, bytes.fromhex(meta["vault_id"]), meta["device_name"][:64],
                                 meta["created_ns"] // 1_000_000)
        _write_atomic(p / GENESIS_FILE, genesis.encode())
        if store.refs.get(MAIN) is None:
            root = trees.TreeEditor(store, None).commit()
            first = vault._make_commit(root, (), "vault created")
            if not store.refs.cas(MAIN, None, first):
                raise errors.ConflictError("main already existed in a fresh vault")
        # vault.json last: a vault directory without it is not a vault, so a
        # crash during create leaves nothing that half-opens.
        _write_atomic(p / META_FILE, json.dumps(meta, indent=2).encode())
        return vault

    @classmethod
    def _open_vault(cls, path: str | os.PathLike | None = None, *, _node: bool = False) -> "Vault":
        """Open an existing vault; NotAVault if `path` holds none, WrongKey if its key does not fit.

        When a node runs on the vault (`pcloud serve`), moves of `main` go through
        it (Raft) via the control socket; everything else stays local. `_node` is
        the node itself opening its own handles.
        """
        p = Path(path) if path is not None else default_vault_dir()
        meta_path = p / META_FILE
        if not meta_path.is_file():
            raise errors.NotAVault(f"{p} is not a pcloud vault (no {META_FILE}); run `pcloud init` first")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise errors.NotAVault(f"{meta_path} is unreadable: {exc}") from exc
        if meta.get("format") != VAULT_FORMAT:
            raise errors.NotAVault(f"{p}: vault format {meta.get('format')!r} is not supported (want {VAULT_FORMAT})")
        identity = DeviceIdentity.load(p)
        if not (p / KEYRING_FILE).exists():
            raise errors.WrongKey(f"{p}: this device holds no vault key ({KEYRING_FILE} is missing)")
        keyring = identity.load_keyring(p / KEYRING_FILE)  # also refuses a group/world-readable file
        store = ObjectStore.open(p / "store", keyring)
        refs: Refs = store.refs
        client = None if _node else control.node_client(p)
        if client is not None:
            refs = control.ForwardingRefs(store.refs, control.client_cas_main(client), store.flush)
        vault = cls(p, identity, keyring, store, refs, LocalIndex(p / "index.db"), meta)
        vault._control = client
        return vault

    open = _ClassOrInstance("_open_vault", "_open_file")
    """`Vault.open(dir)` opens a vault; `vault.open(path)` opens a file in it for streaming reads."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for ld in list(self._live_docs):
                ld.close()
            if self._control is not None:
                self._control.close()
            self.store.close()
            self.index.close()

    def __enter__(self) -> "Vault":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- identity
    @property
    def device_id(self) -> str:
        return self.identity.short_id

    @property
    def device_name(self) -> str:
        return self._meta["device_name"]

    @property
    def vault_id(self) -> str:
        return self._meta["vault_id"]

    @property
    def node(self) -> "control.ControlClient | None":
        """The control channel of the node running on this vault (`pcloud serve`), or None."""
        return self._control

    def take_diverted(self) -> list[str]:
        """Branches that commits went to instead of `main` since the last call (the node had no
        Raft quorum; they are merged into main automatically later). Empty without a node."""
        diverted = getattr(self.refs, "diverted", None)
        if not diverted:
            return []
        out = list(dict.fromkeys(diverted))
        diverted.clear()
        return out

    @property
    def branch(self) -> str:
        """The branch writes go to (this device's choice; `main` by default)."""
        return self.index.get("branch", MAIN) or MAIN

    # ------------------------------------------------------------------ writes
    @contextmanager
    def commit(self, message: str) -> Iterator[Transaction]:
        """Collect writes, removes and moves; make them one commit when the block ends.

        Nothing is committed if the block raises. Nested use is an error.
        """
        with self._transaction(message) as tx:
            yield tx

    @contextmanager
    def commit_at(self, expected_head: ObjectId, message: str, *, branch: str | None = None) -> Iterator[Transaction]:
        """Like `commit`, but the edits apply to commit ``expected_head`` only, never replayed on a newer head.

        When the block ends the edits are applied to ``expected_head``'s tree and
        ``branch`` (default: the current one) moves from ``expected_head`` to the
        new commit by compare-and-swap. If the branch has moved meanwhile,
        ConflictError is raised and nothing is committed (objects stored in the
        block stay unreferenced until `gc`). For callers that checked every edited
        path against that head (folder sync), where a silent replay on top of
        someone else's change to the same path would overwrite it.
        """
        with self._transaction(message, branch=branch, expected=expected_head) as tx:
            yield tx

    @contextmanager
    def _transaction(self, message: str, *, branch: str | None = None,
                     expected: ObjectId | None = None) -> Iterator[Transaction]:
        """The one place a Transaction opens: store writes batched, edits applied when the block ends."""
        self._check_open()
        if self._tx is not None:
            raise errors.UsageError("a commit is already open on this vault")
        tx = Transaction(self, message)
        self._tx = tx
        try:
            with self.store.transaction():
                yield tx
                tx.result = self._apply(tx.ops, message, branch=branch, expected=expected)
        finally:
            self._tx = None

    def write(self, path: str, data: Data, *, message: str | None = None) -> WriteResult:
        """Store `data` (bytes, str, a binary file object or a local path) at `path`: one commit."""
        path = paths.normalize(path)
        if not path:
            raise errors.BadPath("cannot write to the vault root; give a file path")
        if self._tx is not None:
            self._tx.write(path, data)
            return WriteResult(None, 1, 0)
        with self.commit(message or f"write {path}") as tx:
            tx.write(path, data)
        return WriteResult(_commit_hex(tx.result), tx.files, tx.bytes)

    def remove(self, path: str, *, message: str | None = None) -> CommitInfo | None:
        """Remove a file, document or whole directory: one commit."""
        with self._single(message or f"remove {path}") as tx:
            tx.remove(path)
        return tx.result

    def move(self, src: str, dst: str, *, message: str | None = None) -> CommitInfo | None:
        """Rename or move a file or directory: one commit."""
        with self._single(message or f"move {src} -> {dst}") as tx:
            tx.move(src, dst)
        return tx.result

    @contextmanager
    def _single(self, message: str) -> Iterator[Transaction]:
        if self._tx is not None:
            yield self._tx
        else:
            with self.commit(message) as tx:
                yield tx

    def import_path(self, src: str | os.PathLike, dest: str = "", *, message: str | None = None,
                    progress: Progress | None = None) -> WriteResult:
        """Put a local file or folder into the vault under `dest`: one commit.

        Folders are added recursively (existing vault files not in `src` are
        kept, like `cp -r`). Files whose size, mtime and inode match the stat
        cache are not re-read. Symlinks and special files are skipped.
        """
        src_p = Path(src)
        try:
            st = src_p.stat()
        except FileNotFoundError:
            raise errors.NotFound(f"{src}: no such file or directory") from None
        dest = paths.normalize(dest)
        if stat_mod.S_ISREG(st.st_mode):
            target = dest if dest and not self._is_dir(dest) else paths.join(dest, src_p.name)
            files = [(src_p.resolve(), target, st)]
        elif stat_mod.S_ISDIR(st.st_mode):
            files = list(_scan(src_p.resolve(), dest))
        else:
            raise errors.BadArgument(f"{src} is neither a regular file nor a directory")
        root = str(src_p.resolve())
        cache = self.index.cached_blobs(root)
        new_cache: list[tuple[str, StatKey, bytes]] = []
        done_files = done_bytes = unchanged = 0
        with self.commit(message or f"put {src_p.name or root}") as tx:
            for local, vpath, st in files:
                key = StatKey.of(st)
                hit = cache.get(str(local))
                if hit is not None and hit[0] == key and self.store.has(hit[1]):
                    entry = TreeEntry(paths.basename(vpath), EntryKind.FILE, hit[1],
                                      _mode(st), st.st_size, st.st_mtime_ns)
                    tx.set_entry(vpath, entry)
                    unchanged += 1
                else:
                    with open(local, "rb") as f:
                        tx.write(vpath, f, mode=_mode(st), mtime_ns=st.st_mtime_ns)
                    new_cache.append((str(local), key, tx.ops[-1].entry.id))  # type: ignore[union-attr]
                done_files += 1
                done_bytes += st.st_size
                if progress:
                    progress(done_files, done_bytes)
        self.index.remember(new_cache)
        return WriteResult(_commit_hex(tx.result), done_files, done_bytes, unchanged)

    # ------------------------------------------------------------------- reads
    def read(self, path: str, *, ref: str | None = None) -> bytes:
        """The whole content of a file (use `open` for large files)."""
        with self.open(path, ref=ref) as f:
            return f.read()

    def _open_file(self, path: str, *, ref: str | None = None) -> "VaultFile":
        """A read-only, seekable binary file object streaming the file's chunks."""
        entry = self._entry(path, ref)
        if entry.kind != EntryKind.FILE:
            raise errors.UsageError(f"{path} is a {entry.kind}, not a file")
        self._fetch_if_missing(entry.id)
        blob = self.store.get(entry.id)
        assert isinstance(blob, Blob)
        return VaultFile(self.store, blob)

    def stat(self, path: str, *, ref: str | None = None) -> Entry:
        path = paths.normalize(path)
        if not path:
            return Entry("", EntryKind.DIR, 0, 0, _hex(self._tree_of(ref)) or "")
        entry = self._entry(path, ref)
        return Entry(path, entry.kind, entry.size, entry.mtime_ns, entry.id.hex())

    def exists(self, path: str, *, ref: str | None = None) -> bool:
        try:
            self.stat(path, ref=ref)
        except errors.NotFound:
            return False
        return True

    def ls(self, path: str = "", *, ref: str | None = None, recursive: bool = False) -> list[Entry]:
        """Entries of a directory (or the one entry of a file), sorted by path."""
        path = paths.normalize(path)
        root = self._tree_of(ref)
        if path:
            e = self._entry(path, ref)
            if e.kind != EntryKind.DIR:
                return [Entry(path, e.kind, e.size, e.mtime_ns, e.id.hex())]
            tree_id = e.id
        else:
            tree_id = root
        if recursive:
            return [Entry(p, e.kind, e.size, e.mtime_ns, e.id.hex())
                    for p, e in trees.walk(self.store, tree_id, path)]
        tree = self.store.get(tree_id)
        assert isinstance(tree, Tree)
        return [Entry(paths.join(path, e.name), e.kind, e.size, e.mtime_ns, e.id.hex()) for e in tree.entries]

    def export(self, path: str, dest: str | os.PathLike, *, ref: str | None = None,
               progress: Progress | None = None) -> ExportResult:
        """Copy a file or folder out of the vault; every file is written atomically (temp + rename)."""
        path = paths.normalize(path)
        dest_p = Path(dest)
        root = self._tree_of(ref)  # resolve the ref once: every file below comes from this one tree
        top = trees.lookup(self.store, root, path) if path else None
        if path and top is None:
            raise errors.NotFound(f"{path}: no such file or directory in the vault")
        if top is not None and top.kind != EntryKind.DIR:
            target = dest_p / paths.basename(path) if dest_p.is_dir() else dest_p
            items = [(top, target)]
        else:
            base = dest_p / paths.basename(path) if path and dest_p.is_dir() else dest_p
            prefix = path + "/" if path else ""
            items = [(e, base / p[len(prefix):]) for p, e in trees.walk(self.store, top.id if top else root, path)
                     if e.kind == EntryKind.FILE]
            base.mkdir(parents=True, exist_ok=True)
        files = total = 0
        made: set[Path] = set()
        for entry, target in items:
            if target.parent not in made:
                target.parent.mkdir(parents=True, exist_ok=True)
                made.add(target.parent)
            tmp = target.with_name(f".{target.name}.pcloud-tmp")
            try:
                with open(tmp, "wb") as out:
                    for chunk in self.store.read_stream(entry.id):
                        out.write(chunk)
                if entry.mode & 0o111:
                    os.chmod(tmp, 0o755)
                os.replace(tmp, target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            if entry.mtime_ns:
                os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
            files += 1
            total += entry.size
            if progress:
                progress(files, total)
        return ExportResult(files, total)

    # ---------------------------------------------------------------- documents
    def doc(self, path: str, *, create: bool = True, live: bool = True) -> "LiveDocument":
        """A live CRDT document at `path` (created empty if missing and `create`).

        Edit it through `.text(name)` / `.map(name)`; `save()` (or leaving a
        `with` block) commits its state. With a node running and `live`, every
        edit is also sent at once to the connected devices, and their edits
        arrive here: reads apply them (`refresh()`, `wait_remote()`); see
        `pcloud.doclive`. `close()` the document (or leave the `with` block) to
        end that link; `Vault.close` ends the ones still open.
        """
        path = paths.normalize(path)
        try:
            entry = self._entry(path, None)
        except errors.NotFound:
            if not create:
                raise
            ld = LiveDocument(self, path, Document.new())
        else:
            if entry.kind != EntryKind.DOC:
                raise errors.UsageError(f"{path} is a {entry.kind}, not a document")
            obj = self.store.get(entry.id)
            assert isinstance(obj, Doc)
            ld = LiveDocument(self, path, Document.from_object(obj), entry.id)
        if live and self._control is not None:
            from .doclive import DocFeed
            ld._attach(DocFeed(self.path, self.keyring, ld.doc_id))
            self._live_docs.append(ld)
        return ld

    # ------------------------------------------------------------------ history
    def log(self, limit: int | None = None, *, branch: str | None = None) -> list[CommitInfo]:
        """Commits reachable from a branch's head, newest first."""
        head = self._head(branch or self.branch)
        out = []
        for cid, c in history.log(self.store, head, limit):
            out.append(self._info(cid, c))
        return out

    def branches(self) -> dict[str, str]:
        """Every branch and the commit (hex) it points at."""
        return {name: oid.hex() for name, oid in sorted(self.refs.list().items())}

    def create_branch(self, name: str, start: str | None = None) -> str:
        """Make branch `name` at `start` (a branch or commit; default the current branch's head)."""
        _check_branch_name(name)
        at = self.resolve(start) if start else self._head(self.branch)
        if not self.refs.cas(name, None, at):
            raise errors.BadArgument(f"branch {name!r} already exists")
        return at.hex()

    def delete_branch(self, name: str) -> None:
        if name == MAIN:
            raise errors.BadArgument("main cannot be deleted")
        if name == self.branch:
            raise errors.BadArgument(f"{name} is the current branch; switch away first")
        head = self._head(name)
        if not self.refs.cas(name, head, None):
            raise errors.ConflictError(f"branch {name} moved while deleting it; try again")

    def switch(self, name: str) -> None:
        """Make `name` the branch that writes go to (the vault content is not on disk, so nothing else moves)."""
        self._head(name)
        self.index.set("branch", name)

    def merge(self, source: str, *, into: str | None = None, message: str | None = None) -> MergeOutcome:
        """3-way merge of branch `source` into `into` (default: the current branch).

        A file changed on both sides keeps both (theirs as a conflict copy),
        an edit wins over a delete, documents merge as CRDTs. Conflicts come
        back in the result; they are not errors.
        """
        target = into or self.branch
        for _ in range(8):
            ours, theirs = self._head(target), self.resolve(source)
            if ours == theirs or history.is_ancestor(self.store, theirs, ours):
                return MergeOutcome(ours.hex(), fast_forward=False)
            if history.is_ancestor(self.store, ours, theirs):
                if self.refs.cas(target, ours, theirs):
                    return MergeOutcome(theirs.hex(), fast_forward=True)
                continue
            oc, tc = self._commit(ours), self._commit(theirs)
            with self.store.transaction():
                # criss-cross histories get a virtual base (git's "recursive"), not an arbitrary one
                base_tree = merge_mod.merge_base_tree(self.store, ours, theirs)
                result = merge_mod.merge_trees(
                    self.store, base_tree, oc.tree, tc.tree,
                    ours_device=self.identity.short_id_of(oc.device),
                    theirs_device=self.identity.short_id_of(tc.device),
                    theirs_time=tc.time_ns, doc_merger=merge_doc_objects)
                cid = self._make_commit(result.tree, (ours, theirs), message or f"merge {source} into {target}")
                if self.refs.cas(target, ours, cid):
                    return MergeOutcome(cid.hex(), False, tuple(
                        ConflictInfo(c.path, c.copy_path, c.reason) for c in result.conflicts))
        raise errors.ConflictError(f"{target} kept moving during the merge; try again")

    def diff(self, a: str | None = None, b: str | None = None) -> list[ChangeInfo]:
        """Changes from `a` to `b` (branches or commits). No args: the last commit's changes."""
        if b is None:
            b_id = self._head(self.branch)
        else:
            b_id = self.resolve(b)
        if a is None:
            parents = self._commit(b_id).parents
            a_tree = self._commit(parents[0]).tree if parents else None
        else:
            a_tree = self._commit(self.resolve(a)).tree
        changes = diff_mod.diff_trees(self.store, a_tree, self._commit(b_id).tree)
        return [ChangeInfo(c.kind, c.path, c.old_path) for c in changes]

    def resolve(self, ref: str) -> ObjectId:
        """A branch name, or a commit id (hex, at least 6 digits, unique prefix), to a commit id."""
        head = self.refs.get(ref)
        if head is not None:
            return head
        r = ref.lower()
        if len(r) >= 6 and all(ch in "0123456789abcdef" for ch in r):
            if len(r) == 64 and self.store.has(bytes.fromhex(r)):
                return bytes.fromhex(r)
            found = {cid for h in self.refs.list().values()
                     for cid, _ in history.log(self.store, h, None) if cid.hex().startswith(r)}
            if len(found) == 1:
                return found.pop()
            if len(found) > 1:
                raise errors.BadArgument(f"commit prefix {ref} is ambiguous")
        raise errors.NotFound(f"no branch or commit named {ref!r}")

    # -------------------------------------------------------------- maintenance
    def fsck(self, *, on_demand: bool | None = None) -> FsckResult:
        """Verify every stored object (decrypt, authenticate, re-hash, decode) and every branch head.

        On an on-demand device (``on_demand``; by default the running node's
        policy, else the one it last ran with) the chunks of files never opened
        are absent by design: they are counted in ``missing_content``, while
        everything else the branches reach (commits, trees, file manifests,
        documents) must be present, and its absence is an error.
        """
        lazy = self._runs_on_demand() if on_demand is None else on_demand
        rep = self.store.fsck(check_refs=not lazy)
        errs = list(rep.errors)
        missing = self._check_metadata_closure(errs) if lazy else 0
        for name, head in self.refs.list().items():
            if not self.store.has(head):
                errs.append((head.hex(), f"head of branch {name} is missing"))
        return FsckResult(not errs, rep.objects, tuple(errs), missing)

    def _runs_on_demand(self) -> bool:
        from .pins import recorded_policy
        if self._control is not None:
            try:
                return self._control.call("status").get("policy") == "on-demand"
            except control.ControlError:
                pass
        return recorded_policy(self.path) == "on-demand"

    def _check_metadata_closure(self, errs: list[tuple[str, str]]) -> int:
        """Walk every branch's metadata: report absent non-chunk objects in ``errs``; return absent chunks."""
        seen: set[ObjectId] = set()
        stack = [(h, "") for h in self.refs.list().values()]
        missing_chunks = 0
        while stack:
            oid, parent = stack.pop()
            if oid in seen:
                continue
            seen.add(oid)
            if not self.store.has(oid):
                if parent:
                    errs.append((parent, f"references missing object {oid.hex()}"))
                continue
            try:
                obj = self.store.get(oid)
            except (errors.CorruptObject, errors.WrongKey):
                continue                      # already reported by the object check
            if isinstance(obj, Blob):
                missing_chunks += sum(1 for c in obj.refs() if not self.store.has(c))
                continue
            stack.extend((r, oid.hex()) for r in obj.refs())
        return missing_chunks

    def gc(self) -> GcResult:
        """Drop objects no branch reaches; on an on-demand device with a running node, also the
        content of unpinned files that another full or archive replica holds (`pcloud.pins`)."""
        rep = self.store.gc(self.refs.list().values())
        evicted = 0
        if self._control is not None and self._runs_on_demand():
            try:
                evicted = int(self._control.call("evict")["evicted"])
            except control.ControlError as exc:
                raise errors.NodeNotRunning(f"unreferenced objects were dropped, but the node did not evict "
                                            f"unpinned content: {exc}") from None
        return GcResult(True, rep.kept, rep.removed, (), evicted)

    def status(self) -> VaultStatus:
        main = self.refs.get(MAIN)
        return VaultStatus(self.identity.short_id, self.device_name, self.vault_id, self.branch,
                           _hex(main), self.branches())

    # ------------------------------------------------------------------ helpers
    def _check_open(self) -> None:
        if self._closed:
            raise errors.UsageError("this vault is closed")

    def _head(self, branch: str) -> ObjectId:
        head = self.refs.get(branch)
        if head is None:
            raise errors.NotFound(f"no branch named {branch!r}")
        return head

    def _commit(self, cid: ObjectId) -> Commit:
        c = self.store.get(cid)
        if not isinstance(c, Commit):
            raise errors.NotFound(f"{cid.hex()} is not a commit")
        return c

    def _tree_of(self, ref: str | None) -> ObjectId:
        return self._commit(self.resolve(ref) if ref else self._head(self.branch)).tree

    def _entry(self, path: str, ref: str | None) -> TreeEntry:
        path = paths.normalize(path)
        entry = trees.lookup(self.store, self._tree_of(ref), path) if path else None
        if entry is None:
            raise errors.NotFound(f"{path or '/'}: no such file or directory in the vault")
        return entry

    def _is_dir(self, path: str) -> bool:
        try:
            return self._entry(path, None).kind == EntryKind.DIR
        except errors.NotFound:
            return False

    def _require(self, path: str) -> str:
        path = paths.normalize(path)
        if not path:
            raise errors.BadPath("the vault root cannot be removed or moved")
        self._entry(path, None)
        return path

    def _store_file(self, path: str, data: Data, mode: int | None, mtime_ns: int | None) -> TreeEntry:
        if isinstance(data, str):
            data = data.encode()
        if isinstance(data, (bytes, bytearray, memoryview)):
            blob_id, size = self.store.write_stream(io.BytesIO(bytes(data)))
        elif isinstance(data, os.PathLike):
            with open(data, "rb") as f:
                blob_id, size = self.store.write_stream(f)
        else:
            blob_id, size = self.store.write_stream(data)
        return TreeEntry(paths.basename(path), EntryKind.FILE, blob_id,
                         mode if mode is not None else 0o644, size,
                         mtime_ns if mtime_ns is not None else time.time_ns())

    def _fetch_if_missing(self, blob_id: ObjectId) -> None:
        """On-demand devices hold metadata only: ask the running node to fetch a file's content now."""
        if self._control is None:
            return
        if self.store.has(blob_id) and all(self.store.has(c) for c in self.store.refs_of(blob_id)):
            return
        try:
            self._control.call("fetch", ids=[blob_id.hex()])
        except control.ControlError as exc:
            raise errors.NotFound(f"file content {blob_id.hex()[:12]} is not on this device and could not be "
                                  f"fetched: {exc}") from None

    def _make_commit(self, tree: ObjectId, parents: tuple[ObjectId, ...], message: str) -> ObjectId:
        return history.make_commit(self.store, tree, parents, self.identity.sign,
                                   self.identity.public_key, message, time.time_ns())

    def _apply(self, ops: list[_Op], message: str, *, branch: str | None = None,
               expected: ObjectId | None = None) -> CommitInfo | None:
        """Apply edits to the branch head and move it by CAS; replay on a lost race.

        With ``expected``, apply them once to that commit and raise ConflictError
        if the branch no longer points there (no replay: see `commit_at`).
        """
        branch = branch or self.branch
        for _ in range(1 if expected is not None else 16):
            head = expected if expected is not None else self._head(branch)
            old_tree = self._commit(head).tree
            editor = trees.TreeEditor(self.store, old_tree)
            for op in ops:
                if op.kind == "set":
                    assert op.entry is not None
                    editor.set(op.path, self._merge_doc_entry(old_tree, op.path, op.entry))
                elif op.kind == "remove":
                    editor.remove(op.path)
                else:
                    assert op.dest is not None
                    editor.move(op.path, op.dest)
            new_tree = editor.commit()
            if new_tree == old_tree:
                return None
            cid = self._make_commit(new_tree, (head,), message)
            if self.refs.cas(branch, head, cid):
                return self._info(cid, self._commit(cid))
        if expected is not None:
            raise errors.ConflictError(f"branch {branch} moved away from {expected.hex()[:12]}; nothing was committed")
        raise errors.ConflictError(f"branch {branch} kept moving; gave up after 16 tries")

    def _merge_doc_entry(self, tree: ObjectId, path: str, entry: TreeEntry) -> TreeEntry:
        """A document saved over another state of the same document merges with it (CRDT).

        Two devices that edit one document concurrently both save it; whoever
        loses the race to move the branch replays its save on the winner's head,
        and that replay must keep the winner's edits, not overwrite them.
        """
        if entry.kind != EntryKind.DOC:
            return entry
        current = trees.lookup(self.store, tree, path)
        if current is None or current.kind != EntryKind.DOC or current.id == entry.id:
            return entry
        try:
            merged = merge_doc_objects(self.store, current.id, entry.id)
        except errors.BadArgument:
            return entry                     # a different document replaces this one
        if merged == entry.id:
            return entry
        obj = self.store.get(merged)
        assert isinstance(obj, Doc)
        return TreeEntry(entry.name, EntryKind.DOC, merged, entry.mode, len(obj.update), entry.mtime_ns)

    def _info(self, cid: ObjectId, c: Commit) -> CommitInfo:
        return CommitInfo(cid.hex(), c.message, self.identity.short_id_of(c.device), c.time_ns,
                          tuple(p.hex() for p in c.parents))


class VaultFile(io.RawIOBase):
    """Read-only seekable view of a stored file, fetching one chunk at a time (bounded memory)."""

    def __init__(self, store: ObjectStore, blob: Blob) -> None:
        self._store = store
        self._chunks = blob.chunks
        self._starts = []
        pos = 0
        for c in blob.chunks:
            self._starts.append(pos)
            pos += c.size
        self._size = pos
        self._pos = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buf) -> int:  # type: ignore[override]
        if self._pos >= self._size:
            return 0
        import bisect
        i = bisect.bisect_right(self._starts, self._pos) - 1
        if self._cached is None or self._cached[0] != i:
            self._cached = (i, self._store.get_chunk(self._chunks[i].id))
        data = self._cached[1]
        off = self._pos - self._starts[i]
        n = min(len(buf), len(data) - off)
        buf[:n] = data[off:off + n]
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = []
        while True:
            b = self.read(4 << 20)
            if not b:
                return b"".join(parts)
            parts.append(b)


def _commit_hex(info: CommitInfo | None) -> str | None:
    return info.commit if info else None


def _mode(st: os.stat_result) -> int:
    return 0o755 if st.st_mode & 0o111 else 0o644


def _scan(root: Path, dest: str) -> Iterator[tuple[Path, str, os.stat_result]]:
    """Regular files under `root` (symlinks and special files skipped), with their vault paths."""
    stack = [(root, dest)]
    while stack:
        d, vdir = stack.pop()
        with os.scandir(d) as it:
            for e in sorted(it, key=lambda e: e.name):
                if e.is_symlink():
                    continue
                vpath = paths.join(vdir, e.name)
                if e.is_dir():
                    stack.append((Path(e.path), vpath))
                elif e.is_file():
                    yield Path(e.path), vpath, e.stat()


def _check_branch_name(name: str) -> None:
    if not name or len(name) > 100 or name.startswith("-") or any(c in name for c in " \t\n~^:?*[\\") \
            or ".." in name or name.endswith("/") or name.startswith("/"):
        raise errors.BadArgument(f"{name!r} is not a valid branch name")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
