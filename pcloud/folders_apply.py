"""Writing vault changes into a watched folder without ever clobbering a local edit.

Every change is guarded by what the syncer last knew of the path (the
`FolderFile` record, or "nothing there"):

* A write goes to a temp file in the same directory
  (``.<name>.<random>.pcloud-tmp``, ignored by every scanner), is made durable
  (fsynced alone, or a batch of small ones with one ``syncfs``), gets
  its mode and mtime, and is then renamed over the target. When the target
  must not exist, the temp file is hard-linked to it instead (``link`` fails if
  the name is taken, so a file created meanwhile is never replaced) and then
  unlinked.
* Right before replacing, deleting or renaming, the target is ``lstat``ed and
  compared with the record; if it changed (the user saved meanwhile), the
  operation is abandoned with `LocalChanged` and the engine retries the path
  on its next cycle, where the edit is seen and kept. The remaining window is
  the few microseconds between that ``lstat`` and the ``rename`` (POSIX has
  no compare-and-rename); documented in docs/folders.md.
* The returned stat is the fstat of the file as written (mtime already set),
  which the engine records: the watcher event our own write causes then finds
  an unchanged file, so nothing echoes back as a local change.
* A process killed at any point leaves at worst a ``*.pcloud-tmp`` file, which
  `remove_stale_temps` deletes at the next start; final paths only ever hold
  complete files.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat as stat_mod
import sys
from typing import Iterable

from .ignore import TEMP_SUFFIX
from .localindex import FolderFile
from .folders_scan import to_local


class LocalChanged(Exception):
    """The local path is not what the syncer last synced: leave it alone this time."""


def _check(target: str, expect: FolderFile | None) -> None:
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        if expect is None:
            return
        raise LocalChanged(f"{target} was deleted locally") from None
    if expect is None:
        raise LocalChanged(f"{target} appeared locally")
    if not stat_mod.S_ISREG(st.st_mode) or not expect.same_stat(st):
        raise LocalChanged(f"{target} was changed locally")


def temp_name(name: str) -> str:
    return f".{name[:200]}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def _make_parent(root: str, rel: str) -> str:
    parent_rel = rel.rpartition("/")[0]
    parent = to_local(root, parent_rel)
    if parent_rel:
        os.makedirs(parent, exist_ok=True)  # NotADirectoryError/FileExistsError if a file is in the way
    return parent


def write_file(root: str, rel: str, chunks: Iterable[bytes], mode: int, mtime_ns: int,
               expect: FolderFile | None) -> os.stat_result:
    """Atomically put the bytes of ``chunks`` at ``rel`` if it still matches ``expect``; return its stat.

    Raises LocalChanged (nothing changed on disk) or OSError.
    """
    tmp, st = write_temp(root, rel, chunks, mode, mtime_ns)
    place_temp(root, rel, tmp, expect)
    return st


def write_temp(root: str, rel: str, chunks: Iterable[bytes], mode: int, mtime_ns: int, *,
               sync: bool = True) -> tuple[str, os.stat_result]:
    """Write ``chunks`` to a new temp file next to ``rel``; return its path and stat.

    With ``sync=False`` the data is not fsynced: the caller writes a batch of temp
    files, makes them durable at once with `sync_filesystem`, then places each one
    (`place_temp`) — one flush for many small files instead of one each.
    """
    target = to_local(root, rel)
    parent = _make_parent(root, rel)
    tmp = os.path.join(parent, temp_name(os.path.basename(target)))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            if sync:
                os.fsync(fd)
            os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            st = os.fstat(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard_temp(tmp)
        raise
    return tmp, st


def place_temp(root: str, rel: str, tmp: str, expect: FolderFile | None) -> None:
    """Move the finished, durable temp file ``tmp`` to ``rel`` if it still matches ``expect``
    (LocalChanged otherwise); the temp file is gone either way."""
    try:
        _place(tmp, to_local(root, rel), expect)
    except BaseException:
        discard_temp(tmp)
        raise


def discard_temp(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass


_libc: ctypes.CDLL | None = None


def sync_filesystem(path: str) -> None:
    """Make every write on the file system holding ``path`` durable (Linux ``syncfs``; else ``sync``)."""
    global _libc
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if sys.platform.startswith("linux"):
            if _libc is None:
                _libc = ctypes.CDLL(None, use_errno=True)
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"syncfs failed: {os.strerror(err)}")
        else:
            os.sync()
    finally:
        os.close(fd)


def write_staged(root: str, rel: str, staged: str, mode: int, mtime_ns: int,
                 expect: FolderFile | None) -> os.stat_result | None:
    """Like `write_file`, for content already complete and fsynced in file ``staged`` (`folders_stage`).

    ``staged`` is moved next to the target as the temp file (it is consumed
    whatever happens). Returns None, with nothing changed in the folder, when
    it lives on another file system than the folder (the caller then writes
    the usual way). Raises LocalChanged or OSError like `write_file`.
    """
    target = to_local(root, rel)
    parent = _make_parent(root, rel)
    tmp = os.path.join(parent, temp_name(os.path.basename(target)))
    try:
        os.rename(staged, tmp)
    except OSError as exc:
        try:
            os.unlink(staged)
        except FileNotFoundError:
            pass
        if exc.errno == errno.EXDEV:
            return None
        raise
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, 0o755 if mode & 0o111 else 0o644)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
            os.fsync(fd)  # the data was synced when staged; this covers the new mode and times
            st = os.fstat(fd)
        finally:
            os.close(fd)
        _place(tmp, target, expect)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return st


def _place(tmp: str, target: str, expect: FolderFile | None) -> None:
    """Put finished temp file ``tmp`` at ``target`` if the target is still what ``expect`` says."""
    _check(target, expect)
    if expect is None:
        try:
            os.link(tmp, target)  # no-clobber: fails if something appeared at target
        except FileExistsError:
            raise LocalChanged(f"{target} appeared locally") from None
        os.unlink(tmp)
    else:
        os.replace(tmp, target)


def delete_file(root: str, rel: str, expect: FolderFile) -> None:
    """Remove ``rel`` if it still matches ``expect`` (LocalChanged otherwise); then prune emptied directories."""
    target = to_local(root, rel)
    _check(target, expect)
    os.unlink(target)
    prune_dirs(root, rel)


def rename_file(root: str, old: str, new: str, expect: FolderFile) -> os.stat_result:
    """Move ``old`` (still matching ``expect``) to ``new`` (which must not exist); returns the moved file's stat."""
    src, dst = to_local(root, old), to_local(root, new)
    _check(src, expect)
    _check(dst, None)
    _make_parent(root, new)
    try:
        os.link(src, dst)
    except FileExistsError:
        raise LocalChanged(f"{dst} appeared locally") from None
    os.unlink(src)
    prune_dirs(root, old)
    return os.lstat(dst)


def prune_dirs(root: str, rel: str) -> None:
    """Remove the directories above ``rel`` that are now empty, up to (not including) the folder root.

    The vault has no empty directories, so a remote delete of a directory's
    last file removes the directory here too.
    """
    parts = rel.split("/")[:-1]
    while parts:
        d = to_local(root, "/".join(parts))
        try:
            os.rmdir(d)
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM,
                             errno.EBUSY):
                return
            raise
        parts.pop()


def fsync_dirs(root: str, rels: Iterable[str]) -> None:
    """fsync the directories holding ``rels`` (each once), so renames done in them survive a power cut
    before the syncer records them as synced."""
    for d in sorted({rel.rpartition("/")[0] for rel in rels}):
        try:
            fd = os.open(to_local(root, d), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            continue  # pruned after its last file went, or replaced meanwhile
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale_temps(root: str, rels: Iterable[str]) -> int:
    """Delete the ``*.pcloud-tmp`` files a killed syncer left behind (found by a full scan); returns how many."""
    n = 0
    for rel in rels:
        try:
            os.unlink(to_local(root, rel))
            n += 1
        except FileNotFoundError:
            pass
    return n


__all__ = ["LocalChanged", "write_file", "write_temp", "place_temp", "discard_temp", "sync_filesystem", "write_staged", "fsync_dirs", "delete_file", "rename_file", "prune_dirs", "remove_stale_temps",
           "temp_name"]
