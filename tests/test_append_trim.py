"""consensus.append_trim: a follower keeps the entries it already holds (Raft's append rule)."""
from __future__ import annotations

from hypothesis import given, strategies as st

from consensus.append_trim import trim_append

LOG = [(b"c%d" % i, i, 1 if i < 5 else 2) for i in range(1, 9)]      # indexes 1..8, term 2 from index 5


def append(prev: int, entries: list[tuple[bytes, int, int]], commit: int = 8) -> dict:
    prev_term = next((t for _c, i, t in LOG if i == prev), 0)
    return {"type": "append_entries", "term": 2, "commit_index": commit, "entries": entries,
            "prevLogIdx": prev, "prevLogTerm": prev_term}


def test_a_resent_overlapping_append_keeps_what_the_follower_holds():
    msg = append(3, [(b"c4", 4, 1), (b"c5", 5, 2), (b"c6", 6, 2), (b"c7", 7, 2), (b"c8", 8, 2), (b"c9", 9, 2)])
    out = trim_append(LOG, 8, msg)
    assert out["prevLogIdx"] == 8 and out["prevLogTerm"] == 2 and out["entries"] == [(b"c9", 9, 2)]
    assert msg["prevLogIdx"] == 3                                   # the input is not modified


def test_a_conflicting_entry_is_left_for_truncation():
    msg = append(4, [(b"x5", 5, 3), (b"x6", 6, 3)])                  # term 3 at index 5 conflicts
    out = trim_append(LOG, 4, msg)
    assert (out["prevLogIdx"], out["entries"]) == (4, msg["entries"]) and out["commit_index"] == 6


def test_a_stale_heartbeat_is_lifted_to_the_applied_index():
    out = trim_append(LOG, 7, append(3, []))
    assert out["prevLogIdx"] == 7 and out["prevLogTerm"] == 2 and out["entries"] == []


def test_commit_is_capped_at_what_the_message_vouches_for():
    out = trim_append(LOG, 2, append(4, [], commit=8))               # entries 5..8 were not checked
    assert out["commit_index"] == 4


def test_a_gap_and_a_snapshot_transfer_pass_through():
    gap = append(12, [(b"c13", 13, 2)])
    gap["prevLogTerm"] = 2
    assert trim_append(LOG, 8, gap)["entries"] == gap["entries"]
    chunk = {"type": "append_entries", "transmission": "start", "data": b"..", "prevLogIdx": 3}
    assert trim_append(LOG, 8, chunk) is chunk


@given(prev=st.integers(0, 10), n=st.integers(0, 6), applied=st.integers(1, 8), commit=st.integers(0, 12))
def test_trimming_never_drops_a_new_entry_or_vouches_beyond_the_message(prev, n, applied, commit):
    entries = [(b"n", i, 2) for i in range(prev + 1, prev + 1 + n)]
    msg = {"type": "append_entries", "term": 2, "commit_index": commit, "entries": entries,
           "prevLogIdx": prev, "prevLogTerm": 2}
    out = trim_append(LOG, applied, msg)
    held = {(i, t) for _c, i, t in LOG}
    assert [e for e in entries if (e[1], e[2]) not in held] == [e for e in out["entries"] if (e[1], e[2]) not in held]
    assert out["commit_index"] <= max(commit, applied)
    end = out["entries"][-1][1] if out["entries"] else out["prevLogIdx"]
    assert out["commit_index"] <= max(end, applied)
