"""pysyncobj's file journal plus durability: ``SyncedJournal.sync`` and its installation.

pysyncobj builds its journal inside ``SyncObj.__init__`` through the module-level
``pysyncobj.syncobj.createJournal``; ``install()`` replaces that function with one
returning ``SyncedJournal``: the same mmap'ed ``FileJournal`` (same file format)
that also tracks whether entries or the term/vote changed since the last
``sync``. ``consensus.raft`` calls ``sync`` after each tick, before (followers)
or right after (leader) the tick's messages leave. With ``fsync=True`` it
msyncs the journal and fsyncs the term/vote file and its directory; otherwise
it only clears the flags (writes are in the page cache: they survive kill -9,
not power loss).
"""
from __future__ import annotations

import os
from typing import Any

import pysyncobj.syncobj
from pysyncobj.journal import FileJournal, MemoryJournal

from consensus import safe_pickle

MEMBERSHIP_TAG = b"\x02"


class SyncedJournal(FileJournal):
    """pysyncobj's FileJournal plus a ``sync()`` that makes new writes durable."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.dirty = False
        self.term_dirty = False
        self.membership: list[tuple[int, str, str]] = []
        """(log index, 'add' | 'rem', node id) of every membership entry in the journal."""
        for i in range(len(self)):
            self._note(*self[i])

    def _note(self, command: bytes, idx: int, term: int) -> None:
        # The only way a node learns that the cluster removed *it*: pysyncobj ignores such
        # an entry for itself. (Entries here were re-pickled locally, see raft_transport.)
        if command[:1] == MEMBERSHIP_TAG:
            op, node_id, _node = safe_pickle.loads(command[1:])
            self.membership.append((idx, op, node_id))

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.dirty = True
        self._note(command, idx, term)

    def clear(self) -> None:
        super().clear()
        self.membership = []
        self.dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        if entryFrom < len(self):
            first = self[entryFrom][1]
            self.membership = [m for m in self.membership if m[0] < first]
        super().deleteEntriesFrom(entryFrom)
        self.dirty = True

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        super().setCurrentTerm(term, votedForNodeId)
        self.term_dirty = True

    def sync(self, fsync: bool) -> None:
        if self.dirty:
            if fsync:
                self.flush()             # msync of the mmap
            self.dirty = False
        if self.term_dirty:
            if fsync:
                fd = os.open(self.path + ".meta", os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                fsync_dir(os.path.dirname(self.path))
            self.term_dirty = False


def fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_journal(journal_file: str | None = None) -> Any:
    # pysyncobj builds its journal inside SyncObj.__init__ via this module-level
    # function; ours is the same FileJournal with a dirty flag and sync().
    return SyncedJournal(journal_file) if journal_file else MemoryJournal()


def install() -> None:
    """Make every SyncObj built from now on use ``SyncedJournal`` for its journal file (idempotent)."""
    pysyncobj.syncobj.createJournal = _create_journal
