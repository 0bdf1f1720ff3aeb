"""Device identity: key files at 0600, short checkable ids, signatures, keyring sealed to a device."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcloud.errors import InsecureKeyFile, WrongKey
from pcloud.identity import (
    KEY_FILE, DeviceIdentity, check_short_id, open_keyring, seal_keyring_for, short_id_of, verify,
)
from pcloud.store.crypto import Keyring


def test_create_load_mode_and_ids(tmp_path: Path):
    me = DeviceIdentity.create(tmp_path)
    key = tmp_path / KEY_FILE
    assert key.stat().st_mode & 0o777 == 0o600
    again = DeviceIdentity.load(tmp_path)
    assert again.public_key == me.public_key == me.device_id and len(me.device_id) == 32
    sid = me.short_id
    assert len(sid) == 19 and sid.count("-") == 3 and check_short_id(sid)
    assert check_short_id(sid.lower().replace("-", " "))
    assert sid == short_id_of(me.public_key) == DeviceIdentity.short_id_of(me.public_key)
    assert DeviceIdentity.generate().short_id != sid


def test_short_id_check_catches_typos():
    sid = short_id_of(b"k" * 32).replace("-", "")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
    for i in range(16):
        for c in alphabet:
            if c != sid[i]:
                assert not check_short_id(sid[:i] + c + sid[i + 1:]), (i, c)
    for i in range(15):  # adjacent transpositions
        if sid[i] != sid[i + 1]:
            swapped = sid[:i] + sid[i + 1] + sid[i] + sid[i + 2:]
            assert not check_short_id(swapped), i
    assert not check_short_id("TOO-SHORT") and not check_short_id("0000-0000-0000-0000")


def test_create_never_overwrites(tmp_path):
    DeviceIdentity.create(tmp_path)
    with pytest.raises(WrongKey, match="already exists"):
        DeviceIdentity.create(tmp_path)


def test_group_readable_key_refused(tmp_path):
    DeviceIdentity.create(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(InsecureKeyFile, match="chmod 600"):
        DeviceIdentity.load(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o600)
    DeviceIdentity.load(tmp_path)


def test_missing_and_corrupt_key(tmp_path):
    with pytest.raises(WrongKey, match="missing"):
        DeviceIdentity.load(tmp_path)
    DeviceIdentity.create(tmp_path)
    key = tmp_path / KEY_FILE
    data = bytearray(key.read_bytes())
    data[-1] ^= 1  # public key no longer matches the seed
    key.write_bytes(bytes(data))
    with pytest.raises(WrongKey, match="corrupt"):
        DeviceIdentity.load(tmp_path)
    key.write_bytes(b"garbage")
    with pytest.raises(WrongKey, match="corrupt"):
        DeviceIdentity.load(tmp_path)


def test_sign_verify():
    me, other = DeviceIdentity.generate(), DeviceIdentity.generate()
    sig = me.sign(b"commit bytes")
    assert len(sig) == 64 and verify(me.public_key, b"commit bytes", sig) and me.verify(b"commit bytes", sig)
    assert not verify(me.public_key, b"commit bytez", sig)
    assert not verify(other.public_key, b"commit bytes", sig)
    assert not verify(me.public_key, b"commit bytes", b"short")
    assert not verify(b"bad key", b"commit bytes", sig)


def test_keyring_sealed_to_device(tmp_path):
    me, other = DeviceIdentity.create(tmp_path), DeviceIdentity.generate()
    kr = Keyring.generate()
    kr.rotate()
    sealed = seal_keyring_for(me.public_key, kr)
    opened = open_keyring(me, sealed)
    assert opened.epochs == kr.epochs and opened.current == kr.current == 1
    assert opened.object_id(1, b"x") == kr.object_id(1, b"x")
    assert seal_keyring_for(me.public_key, kr) != sealed  # sealed boxes are randomised
    with pytest.raises(WrongKey, match="another device"):
        open_keyring(other, sealed)
    damaged = bytearray(sealed)
    damaged[40] ^= 1
    with pytest.raises(WrongKey):
        open_keyring(me, bytes(damaged))
    with pytest.raises(WrongKey, match="limit"):
        open_keyring(me, b"x" * 10_000_000)


def test_keyring_file_round_trip(tmp_path):
    me = DeviceIdentity.create(tmp_path)
    kr = Keyring.generate()
    path = tmp_path / "keyring.sealed"
    me.save_keyring(path, kr)
    assert path.stat().st_mode & 0o777 == 0o600
    assert DeviceIdentity.load(tmp_path).load_keyring(path).epochs == kr.epochs
    os.chmod(path, 0o640)
    with pytest.raises(InsecureKeyFile):
        me.load_keyring(path)
    path.unlink()
    with pytest.raises(WrongKey, match="missing"):
        me.load_keyring(path)


def test_handing_key_to_new_device():
    owner, newcomer = DeviceIdentity.generate(), DeviceIdentity.generate()
    kr = Keyring.generate()
    # the owner knows only the newcomer's public key
    handed = seal_keyring_for(newcomer.public_key, open_keyring(owner, seal_keyring_for(owner.public_key, kr)))
    assert newcomer.open_keyring(handed).vault_tag() == kr.vault_tag()


def test_load_or_create(tmp_path):
    first = DeviceIdentity.load_or_create(tmp_path)
    assert DeviceIdentity.load_or_create(tmp_path).public_key == first.public_key


def test_seal_to_invalid_public_key_refused():
    from pcloud.errors import BadArgument
    with pytest.raises(BadArgument):
        seal_keyring_for(b"short", Keyring.generate())
    with pytest.raises(BadArgument, match="not a valid"):
        seal_keyring_for(b"\xff" * 32, Keyring.generate())
