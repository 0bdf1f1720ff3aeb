"""Commit history: signed commits, log, ancestry and merge bases.

A commit names a root tree and its parents (none for the first commit, two
for a merge); the commit graph is a DAG because ids are hashes of content
that includes the parents' ids. Signing is done by a callable handed in (the
device identity lives in `pcloud.identity`; this module never sees a key).

Invariants:

* `log` yields every commit reachable from the head exactly once, children
  before their parents (topological), and among commits whose children are
  all shown, the newest ``time_ns`` first (ties by id, so the order is the
  same on every device). Clock skew between devices can therefore never
  show a parent above its child.
* `merge_base` returns a *best* common ancestor: one that is not an ancestor
  of another common ancestor. With criss-cross history there can be several;
  `merge_bases` lists them all and `merge_base` picks the newest (ties by id).
  Picking one can only turn a clean merge into a conflict copy, never lose
  data, because the tree merge keeps both sides of every disagreement;
  `pcloud.store.merge.merge_base_tree` does better, merging all best bases
  into a virtual base tree as git's "recursive" strategy does.

Cost: `log`, `merge_bases` and `is_ancestor` read the reachable part of the
commit graph (no generation numbers yet), which is fine for the thousands of
commits a personal vault makes per year.
"""
from __future__ import annotations

import heapq
from collections import deque
from typing import Callable, Iterable, Iterator

from pcloud.errors import BadArgument, CorruptObject, IntegrityError, NotFound
from pcloud.store.objects import Commit, ObjectId, ObjectReader, ObjectWriter, Tree

Sign = Callable[[bytes], bytes]
"""Signs bytes with the device key; returns the signature."""

Verify = Callable[[bytes, bytes, bytes], bool]
"""``verify(public_key, data, signature)``: True if the signature is valid."""


def get_commit(store: ObjectReader, oid: ObjectId) -> Commit:
    """Load commit ``oid``; NotFound if absent, CorruptObject if it is another kind."""
    obj = store.get(oid)
    if not isinstance(obj, Commit):
        raise CorruptObject(oid.hex(), f"expected a commit, found a {type(obj).__name__.lower()}")
    return obj


def make_commit(
    store: ObjectWriter,
    tree: ObjectId,
    parents: Iterable[ObjectId],
    sign: Sign,
    device: bytes,
    message: str,
    time_ns: int,
) -> ObjectId:
    """Sign and store a commit of root ``tree`` on ``parents``; returns its id.

    The signature covers `Commit.signed_bytes` (tree, parents, device, time,
    message). Raises NotFound if the tree or a parent is not in the store,
    BadArgument for duplicate parents or a tree id that is not a tree.
    """
    parents = tuple(parents)
    # Refuse what `decode` would reject: a stored commit must always be readable.
    if not isinstance(device, bytes) or not device:
        raise BadArgument("a commit's device is the author's public key (bytes)")
    if type(time_ns) is not int or not -(2**63) <= time_ns < 2**63:
        raise BadArgument(f"commit time must be an int of ns, got {time_ns!r}")
    if not isinstance(message, str):
        raise BadArgument("a commit message is str")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise BadArgument("commit message is not valid Unicode (lone surrogate)") from None
    if not all(isinstance(p, bytes) and len(p) == 32 for p in parents):
        raise BadArgument("parent ids are 32 bytes")
    if len(set(parents)) != len(parents):
        raise BadArgument("a commit cannot list the same parent twice")
    if not store.has(tree):
        raise NotFound(f"commit tree {tree.hex()} is not in the store")
    if not isinstance(store.get(tree), Tree):
        raise BadArgument(f"{tree.hex()} is not a tree")
    for p in parents:
        if not store.has(p):
            raise NotFound(f"parent commit {p.hex()} is not in the store")
        get_commit(store, p)
    unsigned = Commit(tree, parents, device, time_ns, message)
    signature = sign(unsigned.signed_bytes())
    if not isinstance(signature, bytes) or not signature:
        raise BadArgument("the sign callable must return the signature as non-empty bytes")
    return store.put(Commit(tree, parents, device, time_ns, message, signature))


def verify_commit_signature(commit: Commit, verify_fn: Verify) -> None:
    """Check ``commit``'s signature by its own device key; raises IntegrityError if it fails.

    ``verify_fn(public_key, data, signature)`` returns True for a valid
    signature (wrap pynacl's raising ``VerifyKey.verify`` accordingly).
    Whether that device may write to the vault is the caller's question.
    """
    if not commit.signature:
        raise IntegrityError("commit is not signed")
    if not verify_fn(commit.device, commit.signed_bytes(), commit.signature):
        raise IntegrityError(f"commit signature does not verify for device {commit.device.hex()[:16]}")


def _reachable(store: ObjectReader, head: ObjectId) -> dict[ObjectId, Commit]:
    seen: dict[ObjectId, Commit] = {}
    queue = deque([head])
    while queue:
        oid = queue.popleft()
        if oid in seen:
            continue
        c = get_commit(store, oid)
        seen[oid] = c
        queue.extend(p for p in c.parents if p not in seen)
    return seen


def log(store: ObjectReader, head: ObjectId | None, limit: int | None = None) -> Iterator[tuple[ObjectId, Commit]]:
    """Yield ``(id, commit)`` from ``head`` back to the roots, newest first, children before parents.

    ``head`` None (an unborn branch) yields nothing; ``limit`` caps the count.
    Raises NotFound if a commit in the history is missing.
    """
    if head is None or limit == 0:
        return
    graph = _reachable(store, head)
    waiting = {oid: 0 for oid in graph}  # number of children not yet yielded
    for c in graph.values():
        for p in c.parents:
            waiting[p] += 1
    ready = [(-graph[head].time_ns, head)]
    count = 0
    while ready:
        _, oid = heapq.heappop(ready)
        yield oid, graph[oid]
        count += 1
        if limit is not None and count >= limit:
            return
        for p in graph[oid].parents:
            waiting[p] -= 1
            if waiting[p] == 0:
                heapq.heappush(ready, (-graph[p].time_ns, p))


def ancestors(store: ObjectReader, head: ObjectId) -> set[ObjectId]:
    """Every commit reachable from ``head``, including ``head``."""
    return set(_reachable(store, head))


def is_ancestor(store: ObjectReader, a: ObjectId, b: ObjectId) -> bool:
    """True if commit ``a`` is ``b`` or reachable from ``b`` (so merging ``a`` into ``b`` is a no-op)."""
    if a == b:
        return True
    seen: set[ObjectId] = set()
    queue = deque([b])
    while queue:
        oid = queue.popleft()
        for p in get_commit(store, oid).parents:
            if p == a:
                return True
            if p not in seen:
                seen.add(p)
                queue.append(p)
    return False


def merge_bases(store: ObjectReader, a: ObjectId, b: ObjectId) -> list[ObjectId]:
    """All best common ancestors of ``a`` and ``b``, newest first (ties by id); [] if unrelated."""
    graph_a = _reachable(store, a)
    graph_b = _reachable(store, b)
    common = set(graph_a) & set(graph_b)
    if not common:
        return []
    # A common ancestor is dominated if it is a proper ancestor of another common one.
    dominated: set[ObjectId] = set()
    for c in common:
        if c in dominated:
            continue
        queue = deque(graph_a[c].parents)
        while queue:
            p = queue.popleft()
            if p in dominated:
                continue
            dominated.add(p)
            queue.extend(graph_a[p].parents)
    best = [c for c in common if c not in dominated]
    best.sort(key=lambda c: (-graph_a[c].time_ns, c))
    return best


def merge_base(store: ObjectReader, a: ObjectId, b: ObjectId) -> ObjectId | None:
    """The best common ancestor of ``a`` and ``b`` (see module doc for criss-cross), or None."""
    bases = merge_bases(store, a, b)
    return bases[0] if bases else None
