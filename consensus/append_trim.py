"""Make pysyncobj's follower keep log entries it already holds (Raft's append rule).

pysyncobj 0.3.17 deletes every entry after ``prevLogIdx`` when an AppendEntries
arrives, even entries that match the leader's (same index and term, hence the
same entry by Raft's Log Matching property). A retransmitted or reordered
append (the leader rewinds ``nextIndex`` after a lost message or a replaced
session) then deletes entries the follower has already acknowledged and
applied, logging "truncating already-applied log entries ... may have
diverged". An acknowledged entry that disappears can count toward a commit
and then be missing from a voter's log, which is how Raft loses data.

Raft (Figure 2) deletes only from the first *conflicting* entry. This module
rewrites the message before pysyncobj sees it so its delete becomes exactly
that: entries the follower already has are dropped from the front and
``prevLogIdx``/``prevLogTerm`` advanced past them. A pure function over the
journal's ``(command, index, term)`` records, tested without sockets.
"""
from __future__ import annotations

from typing import Any, Sequence

Entry = tuple[Any, int, int]   # (command, log index, term), as pysyncobj stores them


def trim_append(log: Sequence[Entry], last_applied: int, message: dict[str, Any]) -> dict[str, Any]:
    """Return ``message`` (an ``append_entries``) without what ``log`` already holds.

    - A leading run of entries whose index and term match ``log`` is removed and the
      previous-entry fields point at the last of them.
    - If nothing new is left and the message points below ``last_applied`` (a stale
      or rewound append), it is moved up to ``last_applied``: every applied entry is
      committed, so it is in the current leader's log at the same index and term.
    - ``commit_index`` is capped at the last entry the message vouches for (Raft's
      ``min(leaderCommit, index of last new entry)``), because the entries this
      follower keeps past that point were not checked against the leader's log.
    Anything else (a real conflict, a gap, a snapshot transfer) is left for
    pysyncobj's own handling.
    """
    entries = message.get("entries")
    if entries is None or "transmission" in message or not log:
        return message
    first, last = log[0][1], log[-1][1]

    def term_at(idx: Any) -> int | None:
        return log[idx - first][2] if isinstance(idx, int) and first <= idx <= last else None

    k = 0
    while k < len(entries) and term_at(entries[k][1]) == entries[k][2]:
        k += 1
    out = dict(message)
    if k:
        out.update(entries=list(entries[k:]), prevLogIdx=entries[k - 1][1], prevLogTerm=entries[k - 1][2])
    prev = out.get("prevLogIdx")
    if (not out["entries"] and isinstance(prev, int) and prev < last_applied
            and term_at(prev) == out.get("prevLogTerm") and term_at(last_applied) is not None):
        out.update(prevLogIdx=last_applied, prevLogTerm=term_at(last_applied))
    if isinstance(out.get("commit_index"), int) and isinstance(out.get("prevLogIdx"), int):
        vouched = out["entries"][-1][1] if out["entries"] else out["prevLogIdx"]
        out["commit_index"] = min(out["commit_index"], max(vouched, last_applied))
    return out
