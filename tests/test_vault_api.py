"""The public Python API end to end on a real vault directory (SQLite, packs, real crypto)."""
from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path

import pytest

import pcloud
from pcloud import errors


@pytest.fixture
def vault(tmp_path: Path):
    v = pcloud.Vault.create(tmp_path / "v", name="laptop")
    yield v
    v.close()


def test_exported_members():
    assert set(pcloud.__all__) <= set(dir(pcloud))
    for name in pcloud.__all__:
        assert getattr(pcloud, name) is not None


def test_create_open_and_identity(tmp_path: Path):
    v = pcloud.Vault.create(tmp_path / "v", name="laptop")
    vid, dev = v.vault_id, v.device_id
    v.close()
    with pcloud.Vault.open(tmp_path / "v") as v2:
        assert (v2.vault_id, v2.device_id, v2.device_name) == (vid, dev, "laptop")
        assert [c.message for c in v2.log()] == ["vault created"]
    with pytest.raises(errors.VaultExists):
        pcloud.Vault.create(tmp_path / "v")


def test_open_non_vault_is_clear(tmp_path: Path):
    (tmp_path / "x").mkdir()
    with pytest.raises(errors.NotAVault, match="not a pcloud vault"):
        pcloud.Vault.open(tmp_path / "x")
    with pytest.raises(errors.NotAVault):
        pcloud.Vault.open(tmp_path / "missing")


def test_write_read_ls_stat(vault):
    r = vault.write("a/b/c.txt", b"hello")
    assert r.commit and r.files == 1 and r.bytes == 5
    vault.write("a/d.txt", "text")
    assert vault.read("a/b/c.txt") == b"hello"
    assert vault.read("a/d.txt") == b"text"
    assert [(e.path, e.kind) for e in vault.ls("a")] == [("a/b", "dir"), ("a/d.txt", "file")]
    assert [e.path for e in vault.ls(recursive=True)] == ["a/b/c.txt", "a/d.txt"]
    st = vault.stat("a/b/c.txt")
    assert st.kind == "file" and st.size == 5
    assert vault.exists("a/b") and not vault.exists("nope")
    with pytest.raises(errors.NotFound):
        vault.read("nope.txt")


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../x", "a/./b/..", "a\x00b"])
def test_bad_paths_refused(vault, bad):
    with pytest.raises(errors.BadPath):
        vault.write(bad, b"x")
    assert [c.message for c in vault.log()] == ["vault created"]


def test_transaction_is_one_commit_and_atomic(vault):
    with vault.commit("many") as tx:
        for i in range(20):
            tx.write(f"f/{i}.txt", f"{i}".encode())
    assert tx.result is not None
    assert [c.message for c in vault.log()][:2] == ["many", "vault created"]
    assert len(vault.ls("f")) == 20
    with pytest.raises(RuntimeError):
        with vault.commit("aborted") as tx:
            tx.write("g.txt", b"x")
            raise RuntimeError("boom")
    assert not vault.exists("g.txt")
    assert vault.log(1)[0].message == "many"


def test_remove_move(vault):
    vault.write("d/x.txt", b"1")
    vault.write("d/y.txt", b"2")
    vault.move("d/x.txt", "e/x2.txt")
    assert vault.read("e/x2.txt") == b"1" and not vault.exists("d/x.txt")
    vault.remove("d")
    assert not vault.exists("d/y.txt")
    with pytest.raises(errors.NotFound):
        vault.remove("d")
    with pytest.raises(errors.BadPath):
        vault.remove("")


def test_streaming_open_seek(vault):
    data = os.urandom(5 << 20)
    vault.write("big.bin", io.BytesIO(data))
    with vault.open("big.bin") as f:
        f.seek(3_000_000)
        assert f.read(10) == data[3_000_000:3_000_010]
        f.seek(-5, io.SEEK_END)
        assert f.read() == data[-5:]


def test_import_folder_and_stat_cache(vault, tmp_path: Path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for i in range(30):
        (src / "sub" / f"{i}.txt").write_bytes(os.urandom(100 + i))
    (src / "top.txt").write_text("top")
    os.symlink("/etc/passwd", src / "link")
    r1 = vault.import_path(src, "backup")
    assert r1.files == 31 and r1.commit
    assert not vault.exists("backup/link")
    r2 = vault.import_path(src, "backup")
    assert r2.commit is None and r2.unchanged == 31
    (src / "top.txt").write_text("changed")
    r3 = vault.import_path(src, "backup")
    assert r3.commit and r3.unchanged == 30
    assert vault.read("backup/top.txt") == b"changed"
    out = tmp_path / "out"
    ex = vault.export("backup", out)
    assert ex.files == 31
    assert (out / "sub" / "7.txt").read_bytes() == (src / "sub" / "7.txt").read_bytes()


def test_history_branches_merge_conflict_copy(vault):
    vault.write("r.txt", b"base")
    vault.create_branch("other")
    vault.write("r.txt", b"ours")
    vault.switch("other")
    vault.write("r.txt", b"theirs")
    vault.write("only-theirs.txt", b"t")
    vault.switch("main")
    out = vault.merge("other")
    assert not out.fast_forward and len(out.conflicts) == 1
    c = out.conflicts[0]
    assert c.path == "r.txt" and c.copy_path and c.copy_path.startswith("r.conflict-")
    assert vault.read("r.txt") == b"ours"
    assert vault.read(c.copy_path) == b"theirs"
    assert vault.read("only-theirs.txt") == b"t"
    head = vault.log(1)[0]
    assert len(head.parents) == 2
    # merging again changes nothing
    assert vault.merge("other").commit == head.commit


def test_fast_forward_and_diff(vault):
    vault.write("a.txt", b"1")
    vault.create_branch("f")
    vault.switch("f")
    vault.write("b.txt", b"2")
    vault.move("a.txt", "c.txt")
    vault.switch("main")
    out = vault.merge("f")
    assert out.fast_forward
    kinds = {(c.kind, c.path) for c in vault.diff(vault.log()[2].commit, "main")}
    assert ("added", "b.txt") in kinds and ("renamed", "c.txt") in kinds


def test_documents_live_and_merge(vault):
    with vault.doc("notes.doc") as d:
        d.text().insert(0, "hello")
        d.map()["k"] = "v"
    vault.create_branch("b2")
    with vault.doc("notes.doc") as d:
        d.text().insert(5, " main")
    vault.switch("b2")
    with vault.doc("notes.doc") as d:
        d.map()["other"] = "x"
    vault.switch("main")
    out = vault.merge("b2")
    assert out.conflicts == ()
    j = vault.doc("notes.doc").to_json()
    assert "hello main" in str(j) and "other" in str(j) and vault.stat("notes.doc").kind == "doc"


def test_fsck_and_gc(vault):
    vault.write("x.bin", os.urandom(100_000))
    vault.create_branch("tmp")
    vault.switch("tmp")
    vault.write("y.bin", os.urandom(100_000))
    vault.switch("main")
    assert vault.fsck().ok
    vault.delete_branch("tmp")
    g = vault.gc()
    assert g.removed > 0
    assert vault.fsck().ok
    assert vault.read("x.bin")


def test_wrong_key_is_clear(tmp_path: Path):
    a = pcloud.Vault.create(tmp_path / "a")
    a.close()
    b = pcloud.Vault.create(tmp_path / "b")
    b.close()
    # put b's sealed key into a: a's device cannot open it (sealed to b's device key)
    (tmp_path / "a" / "keyring.sealed").write_bytes((tmp_path / "b" / "keyring.sealed").read_bytes())
    with pytest.raises(errors.WrongKey):
        pcloud.Vault.open(tmp_path / "a")
    (tmp_path / "a" / "keyring.sealed").unlink()
    with pytest.raises(errors.WrongKey, match="no vault key"):
        pcloud.Vault.open(tmp_path / "a")


def test_async_twin(tmp_path: Path):
    async def main():
        av = await pcloud.AsyncVault.create(tmp_path / "av", name="phone")
        async with av:
            await av.write("x.txt", b"async")
            assert await av.read("x.txt") == b"async"
            info = await av.write_many({"a": b"1", "b": b"2"}, message="two")
            assert info is not None and (await av.log(1))[0].message == "two"
            assert [e.path for e in await av.ls()] == ["a", "b", "x.txt"]
    asyncio.run(main())


def test_init_interrupted_before_vault_json_can_be_rerun(tmp_path: Path):
    v = pcloud.Vault.create(tmp_path / "v", name="laptop")
    dev = v.device_id
    v.write("a.txt", b"kept")
    v.close()
    (tmp_path / "v" / "vault.json").unlink()  # as if init died just before its last step
    with pytest.raises(errors.NotAVault):
        pcloud.Vault.open(tmp_path / "v")
    with pcloud.Vault.create(tmp_path / "v", name="laptop") as v2:
        assert v2.device_id == dev
        assert v2.read("a.txt") == b"kept"


def test_world_readable_keyring_is_refused(tmp_path: Path):
    pcloud.Vault.create(tmp_path / "v").close()
    os.chmod(tmp_path / "v" / "keyring.sealed", 0o644)
    with pytest.raises(errors.WrongKey, match="keyring.sealed"):
        pcloud.Vault.open(tmp_path / "v")
