"""The CAS linearizability checker used by the Raft cluster tests catches what it must."""
from __future__ import annotations

from linearizability import Op, check

A, B, C = b"a", b"b", b"c"


def test_sequential_history_passes():
    h = [Op(0, 1, None, A, "ok"), Op(2, 3, A, B, "ok"), Op(4, 5, A, C, "conflict", B)]
    assert check(h)


def test_two_winners_from_the_same_head_fail():
    h = [Op(0, 1, None, A, "ok"), Op(2, 3, A, B, "ok"), Op(2, 3, A, C, "ok")]
    assert not check(h)


def test_concurrent_ops_may_be_reordered():
    # B's CAS overlaps A's and saw A's value: fine only with A first.
    h = [Op(0, 5, None, A, "ok"), Op(1, 4, A, B, "ok")]
    assert check(h)


def test_real_time_order_is_respected():
    # The second op finished before the first began, yet only works after it.
    h = [Op(3, 4, None, A, "ok"), Op(0, 1, A, B, "ok")]
    assert not check(h)


def test_stale_conflict_value_fails():
    h = [Op(0, 1, None, A, "ok"), Op(2, 3, A, B, "ok"), Op(4, 5, None, C, "conflict", A)]
    assert not check(h)


def test_unknown_outcome_may_or_may_not_apply():
    assert check([Op(0, 1, None, A, "unknown"), Op(2, 3, A, B, "ok")])
    assert check([Op(0, 1, None, A, "unknown"), Op(2, 3, None, B, "ok")])
    assert not check([Op(0, 1, None, A, "unknown"), Op(2, 3, C, B, "ok")])
