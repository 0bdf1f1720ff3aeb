"""A small linearizability checker for a compare-and-swap register (Wing & Gong search, memoised).

An operation is ``Op(start, end, expected, new, outcome, observed)``:
``outcome`` is 'ok' (the CAS took effect), 'conflict' (it did not; ``observed``
is the value the register held), or 'unknown' (timed out: it may or may not
have taken effect, at any time after ``start``; ``end`` is ignored). A history
is linearizable if some total order of the operations respects real time
(an op that ended before another started comes first) and replays correctly
on a register starting at ``initial``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    start: float
    end: float
    expected: bytes | None
    new: bytes
    outcome: str
    observed: bytes | None = None


def _step(state: bytes | None, op: Op) -> tuple[bool, bytes | None]:
    """Can ``op`` happen now with its recorded outcome? Returns (possible, next state)."""
    if op.outcome == "ok":
        return (state == op.expected, op.new)
    if op.outcome == "conflict":
        return (state != op.expected and state == op.observed, state)
    raise ValueError(op.outcome)


def check(history: list[Op], initial: bytes | None = None) -> bool:
    """True if ``history`` is linearizable as CAS operations on one register."""
    ops = list(history)
    ends = [math.inf if op.outcome == "unknown" else op.end for op in ops]
    memo: set[tuple[frozenset[int], bytes | None]] = set()

    def search(done: frozenset[int], state: bytes | None) -> bool:
        if len(done) == len(ops):
            return True
        key = (done, state)
        if key in memo:
            return False
        memo.add(key)
        pending = [i for i in range(len(ops)) if i not in done]
        # An op may go next only if no other pending op finished before it started.
        horizon = min(ends[i] for i in pending)
        for i in pending:
            op = ops[i]
            if op.start > horizon:
                continue
            if op.outcome == "unknown":
                # It took effect here (if it could), or never: try both.
                if state == op.expected and search(done | {i}, op.new):
                    return True
                if search(done | {i}, state):
                    return True
                continue
            possible, nxt = _step(state, op)
            if possible and search(done | {i}, nxt):
                return True
        return False

    return search(frozenset(), initial)
