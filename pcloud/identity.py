"""Device identity: one Ed25519 key per device, and the vault key sealed to it.

* The device id *is* the 32-byte Ed25519 public key. People compare the short
  form: base32 of SHA-256(public key), 15 characters plus one Luhn mod 32 check
  character, grouped ``ABCD-EFGH-IJKL-MNOP`` (Syncthing-style). 75 bits make
  an accidental collision between one's own devices hopeless, and the check
  character catches any single mistyped character and every adjacent swap
  except A<->7 (the Luhn mod N blind spot).
* The private key lives in ``<vault>/device.key`` (magic, seed, public key),
  written atomically with mode 0600. Loading refuses a key file that group or
  others can access (InsecureKeyFile, with the chmod to fix it) and a file
  whose seed does not derive its public key (corrupt: WrongKey).
* The vault ``Keyring`` travels and rests sealed to a device: a libsodium
  SealedBox to the device's Curve25519 key (converted from its Ed25519 key),
  over a msgpack record [version, current epoch, [[epoch, secret], ...]].
  ``seal_keyring_for`` needs only the public key, so an owner's device can
  hand the key to a newly admitted device; ``open_keyring`` needs the private key.
"""
from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import msgpack
from nacl.bindings import crypto_sign_ed25519_pk_to_curve25519
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.public import PublicKey, SealedBox
from nacl.signing import SigningKey, VerifyKey

from pcloud.errors import BadArgument, InsecureKeyFile, WrongKey
from pcloud.store.crypto import KEY_BYTES, Keyring

KEY_FILE = "device.key"
_MAGIC = b"PCDK1\n"
_KEYRING_VERSION = 1
MAX_EPOCHS = 4096
MAX_SEALED_KEYRING = 48 + 16 + MAX_EPOCHS * 48  # sealed-box overhead + generous msgpack room
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def _luhn32(body: str) -> str:
    """Luhn mod N check character over the base32 alphabet."""
    factor, total = 2, 0
    for ch in reversed(body):
        addend = factor * _ALPHABET.index(ch)
        factor = 1 if factor == 2 else 2
        total += addend // 32 + addend % 32
    return _ALPHABET[(32 - total % 32) % 32]


def short_id_of(public_key: bytes) -> str:
    """The human-checkable form of a device id, e.g. ``ABCD-EFGH-IJKL-MNOP``."""
    body = base64.b32encode(hashlib.sha256(public_key).digest()).decode()[:15]
    s = body + _luhn32(body)
    return "-".join(s[i:i + 4] for i in range(0, 16, 4))


def check_short_id(text: str) -> bool:
    """True if ``text`` is well-formed and its check character matches (case/dashes/spaces ignored)."""
    s = text.upper().replace("-", "").replace(" ", "")
    if len(s) != 16 or any(c not in _ALPHABET for c in s):
        return False
    return _luhn32(s[:15]) == s[15]


def verify(public_key: bytes, data: bytes, signature: bytes) -> bool:
    """True if ``signature`` is ``public_key``'s Ed25519 signature of ``data``."""
    try:
        VerifyKey(bytes(public_key)).verify(bytes(data), bytes(signature))
    except (BadSignatureError, ValueError, TypeError, CryptoError):
        return False
    return True


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` atomically to a file only the owner can read."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode is ignored if tmp existed
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_private(path: Path, what: str) -> bytes:
    """Read a secret file, refusing one that group or others can access."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise WrongKey(f"{what} is missing: {path} does not exist") from None
    if st.st_mode & 0o077:
        raise InsecureKeyFile(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with `chmod 600 {path}`")
    return path.read_bytes()


class DeviceIdentity:
    """This device's Ed25519 key pair.

        >>> me = DeviceIdentity.create(vault_dir)      # writes device.key (0600)
        >>> me.short_id
        'K3QF-7ZPA-M2XD-RT5C'
        >>> verify(me.public_key, b"hi", me.sign(b"hi"))
        True
    """

    def __init__(self, signing_key: SigningKey, path: Path | None = None) -> None:
        self._sk = signing_key
        self.path = path
        self.public_key: bytes = bytes(signing_key.verify_key)

    @property
    def device_id(self) -> bytes:
        """The device id: its 32-byte Ed25519 public key."""
        return self.public_key

    @property
    def short_id(self) -> str:
        return short_id_of(self.public_key)

    @staticmethod
    def short_id_of(public_key: bytes) -> str:
        return short_id_of(public_key)

    @classmethod
    def generate(cls) -> "DeviceIdentity":
        """A fresh identity held in memory only."""
        return cls(SigningKey.generate())

    @classmethod
    def create(cls, vault_dir: str | os.PathLike[str]) -> "DeviceIdentity":
        """Generate a key pair and store it in ``vault_dir/device.key`` (0600).

        Raises WrongKey if the directory already has a device key (never overwritten).
        """
        path = Path(vault_dir) / KEY_FILE
        if path.exists():
            raise WrongKey(f"{path} already exists; refusing to replace this device's key")
        sk = SigningKey.generate()
        _write_private(path, _MAGIC + bytes(sk) + bytes(sk.verify_key))
        return cls(sk, path)

    @classmethod
    def load_or_create(cls, vault_dir: str | os.PathLike[str]) -> "DeviceIdentity":
        """Load this directory's device key, creating it first if there is none.

        For a vault ``init`` that a crash interrupted after the key was written.
        """
        if (Path(vault_dir) / KEY_FILE).exists():
            return cls.load(vault_dir)
        return cls.create(vault_dir)

    @classmethod
    def load(cls, vault_dir: str | os.PathLike[str]) -> "DeviceIdentity":
        """Read ``vault_dir/device.key``. Raises WrongKey (missing, corrupt) or InsecureKeyFile."""
        path = Path(vault_dir) / KEY_FILE
        data = read_private(path, "the device key")
        if len(data) != len(_MAGIC) + 64 or not data.startswith(_MAGIC):
            raise WrongKey(f"the device key {path} is corrupt (not a pcloud device key file)")
        seed, pub = data[len(_MAGIC):len(_MAGIC) + 32], data[len(_MAGIC) + 32:]
        sk = SigningKey(seed)
        if bytes(sk.verify_key) != pub:
            raise WrongKey(f"the device key {path} is corrupt (its seed does not match its public key)")
        return cls(sk, path)

    def seed(self) -> bytes:
        """The 32-byte Ed25519 seed, for the transport's TLS identity. Secret: never log or send it."""
        return bytes(self._sk)

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature (64 bytes) of ``data``."""
        return self._sk.sign(bytes(data)).signature

    def verify(self, data: bytes, signature: bytes) -> bool:
        return verify(self.public_key, data, signature)

    def open_keyring(self, sealed: bytes) -> Keyring:
        return open_keyring(self, sealed)

    def save_keyring(self, path: str | os.PathLike[str], keyring: Keyring) -> None:
        """Seal ``keyring`` to this device and write it to ``path`` (0600, atomic)."""
        _write_private(Path(path), seal_keyring_for(self.public_key, keyring))

    def load_keyring(self, path: str | os.PathLike[str]) -> Keyring:
        """Read and open a keyring sealed to this device. WrongKey if missing or not ours."""
        return open_keyring(self, read_private(Path(path), "the sealed vault key"))


def seal_keyring_for(device_public_key: bytes, keyring: Keyring) -> bytes:
    """Seal every epoch of ``keyring`` to a device, knowing only its Ed25519 public key."""
    if len(device_public_key) != 32:
        raise BadArgument("a device public key is 32 bytes")
    try:
        curve = PublicKey(crypto_sign_ed25519_pk_to_curve25519(bytes(device_public_key)))
    except CryptoError:
        raise BadArgument(f"{bytes(device_public_key).hex()} is not a valid Ed25519 public key") from None
    epochs = sorted(keyring.epochs.items())
    payload = msgpack.packb([_KEYRING_VERSION, keyring.current, [[e, s] for e, s in epochs]], use_bin_type=True)
    return SealedBox(curve).encrypt(payload)


def open_keyring(identity: DeviceIdentity, sealed: bytes) -> Keyring:
    """Open a keyring sealed to ``identity``. Raises WrongKey if it is not ours or is damaged."""
    if len(sealed) > MAX_SEALED_KEYRING:
        raise WrongKey(f"sealed vault key is {len(sealed)} bytes, over the {MAX_SEALED_KEYRING}-byte limit")
    try:
        payload = SealedBox(identity._sk.to_curve25519_private_key()).decrypt(bytes(sealed))
    except CryptoError:
        raise WrongKey("the vault key is sealed to another device or damaged; "
                       f"this device is {identity.short_id}") from None
    try:
        version, current, pairs = msgpack.unpackb(payload, raw=False, use_list=True)
        if version != _KEYRING_VERSION:
            raise ValueError(f"keyring record version {version}")
        epochs = {}
        for e, s in pairs:
            if not (isinstance(e, int) and 0 <= e < 2**32 and isinstance(s, bytes) and len(s) == KEY_BYTES):
                raise ValueError("bad epoch entry")
            epochs[e] = s
        if not isinstance(current, int) or current not in epochs:
            raise ValueError("current epoch missing")
        return Keyring(epochs, current)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise WrongKey(f"the sealed vault key opened but its contents are malformed: {exc}") from None


__all__ = ["DeviceIdentity", "seal_keyring_for", "open_keyring", "short_id_of", "check_short_id",
           "verify", "read_private", "KEY_FILE"]
