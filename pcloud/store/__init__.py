"""pcloud.store — the encrypted, git-like, branch-consistent store.

Immutable content-addressed objects sealed under the vault key (objects,
crypto, chunking, sealing; stored by objectstore in packs with an SQLite
index: objectstore_index, objectstore_writes, objectstore_streams,
objectstore_maintenance, packs), mutable branches (refs), trees built from
path edits (trees), history and diffs (history, diff), 3-way merges (merge)
and CRDT documents (documents).
"""
