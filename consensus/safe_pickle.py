"""A restricted unpickler for pysyncobj, installed as defence in depth.

Why: pysyncobj 0.3.17 calls ``pysyncobj.pickle.loads`` on log entries (to find
the replicated method and its arguments, and on membership and version
entries), ``pickle.load`` on snapshot files, and ``journal.loads`` on its meta
file. With its own TCP transport those bytes come straight from peers, so any
peer that can speak Raft could run code on every device (a ``__reduce__``
naming ``os.system``).

pcloud's Raft transport (``consensus.raft_transport``) never carries a pickle:
messages are msgpack with a fixed schema and log entries travel as plain
bytes, re-pickled locally from known shapes. Snapshots are our own msgpack
files. So everything pysyncobj unpickles was pickled on this machine. This
module still replaces pysyncobj's loads with an unpickler that admits only the
few globals those local pickles need, so that a bug or a future code path that
lets remote bytes through fails closed: it raises ``UnsafePayload`` and logs.

Admitted globals (all that pysyncobj's protocol-2 pickles of our data use):
``_codecs.encode`` restricted to 'latin1' (protocol 2 pickles ``bytes`` this
way) and ``pysyncobj.node.Node`` (membership entries carry a Node whose state
is a plain dict).
"""
from __future__ import annotations

import codecs
import io
import logging
import pickle
from typing import IO, Any

import pysyncobj.journal
import pysyncobj.pickle
from pysyncobj.node import Node

from consensus.errors import UnsafePayload

logger = logging.getLogger(__name__)

MAX_PICKLE_BYTES = 8 * 1024 * 1024


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); any other codec
    # (zlib_codec, ...) could be a decompression bomb or worse, so refuse it.
    if encoding != "latin1" or not isinstance(text, str) or errors != "strict":
        raise UnsafePayload(f"pickle asked for codec {encoding!r}")
    return codecs.encode(text, "latin1")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("pysyncobj.node", "Node"): Node,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` admits only ``_ALLOWED``."""

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafePayload(f"pickle names {module}.{name}, which is not admitted")
        return found


def loads(data: bytes | str) -> Any:
    """Unpickle ``data`` admitting only the allow-list; raise ``UnsafePayload`` otherwise."""
    raw = data if isinstance(data, bytes) else data.encode("utf-8")
    if len(raw) > MAX_PICKLE_BYTES:
        raise UnsafePayload(f"pickle of {len(raw)} bytes is over the {MAX_PICKLE_BYTES} limit")
    try:
        return RestrictedUnpickler(io.BytesIO(raw)).load()
    except UnsafePayload:
        logger.error("refused an unsafe pickle (%d bytes)", len(raw))
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
        logger.error("refused a malformed pickle (%d bytes): %s", len(raw), exc)
        raise UnsafePayload(f"malformed pickle: {exc}") from exc


def load(file: IO[bytes]) -> Any:
    """``loads`` over a file object (pysyncobj reads snapshot files this way)."""
    return loads(file.read(MAX_PICKLE_BYTES + 1))


_installed = False


def install() -> None:
    """Route pysyncobj's unpickling through ``loads``/``load`` (idempotent).

    ``syncobj.py`` and ``serializer.py`` call ``pysyncobj.pickle.loads``/``load``
    through the module, so replacing the module attributes reaches them;
    ``journal.py`` imported ``loads`` by name, so it is replaced there too.
    """
    global _installed
    if _installed:
        return
    pysyncobj.pickle.loads = loads
    pysyncobj.pickle.load = load
    pysyncobj.journal.loads = loads
    _installed = True


def installed() -> bool:
    return pysyncobj.pickle.loads is loads and pysyncobj.journal.loads is loads
