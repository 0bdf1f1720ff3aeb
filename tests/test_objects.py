"""Object codec: canonical encodings round-trip and malformed bytes are refused."""
import pytest

from pcloud.store.objects import Blob, ChunkRef, Commit, DecodeError, Doc, Kind, Tree, TreeEntry, decode


def test_round_trips():
    objs = [
        Blob((ChunkRef(b"a" * 32, 10), ChunkRef(b"b" * 32, 5))),
        Tree((TreeEntry("a.txt", "file", b"x" * 32, 0o644, 3, 7), TreeEntry("b", "dir", b"y" * 32))),
        Commit(b"t" * 32, (b"p" * 32,), b"d" * 32, 123, "msg", b"sig"),
        Doc("doc-1", b"\x01\x02"),
    ]
    for o in objs:
        assert decode(o.kind, o.encode()) == o


@pytest.mark.parametrize("kind,data", [
    (Kind.TREE, b"\xc1"),
    (Kind.TREE, b"\x91\x96\xa1b\xa4file\xc4\x01x\x00\x00\x00"),  # short id
    (Kind.BLOB, b"\x81\x01\x02"),
    (Kind.COMMIT, b"\x90"),
    (99, b"\x90"),
])
def test_malformed_refused(kind, data):
    with pytest.raises(DecodeError):
        decode(kind, data)


def test_unsorted_tree_refused():
    t = Tree((TreeEntry("b", "file", b"x" * 32), TreeEntry("a", "file", b"x" * 32)))
    with pytest.raises(DecodeError):
        decode(Kind.TREE, t.encode())
