"""Vault paths: one canonical spelling per location, validated at the API edge.

A vault path names a location relative to the vault root. Its canonical form
is ``'a/b/c'``: names joined by single ``/``, no leading or trailing slash;
``''`` is the root. Every function below that takes a path from outside the
store passes it through `normalize` first, so the tree code can trust that a
path splits into valid names.

Rules (each refusal raises `pcloud.errors.BadPath` naming the path and why):

* Absolute paths (leading ``/``) are refused, not silently made relative:
  a caller who wrote ``/etc/passwd`` made a mistake worth reporting.
* ``..`` and ``.`` components are refused. Resolving ``a/../b`` would be
  harmless inside the vault, but a path that needed resolving was usually
  built from untrusted input, and refusing keeps one spelling per location.
* Empty components (``a//b``) are refused. One trailing slash is tolerated
  (``'docs/'`` means ``'docs'``) because users type directories that way.
* Backslash is refused anywhere. On Windows it is a separator, on POSIX an
  ordinary character; accepting it either way would let ``a\\b`` mean two
  different things on two devices of the same vault.
* NUL is refused (no filesystem can hold it). Other control characters are
  legal POSIX names and are kept, so importing a real folder loses nothing.
* Text is normalised to Unicode NFC, so ``é`` typed on macOS (NFD) and on
  Linux (NFC) name the same file. Lone surrogates (undecodable bytes smuggled
  through ``os.fsdecode``) are refused: names are stored as UTF-8.
* A name is at most 255 UTF-8 bytes (every common filesystem's limit), a path
  at most 4096 bytes and 255 components deep, which bounds recursion in the
  tree code.
"""
from __future__ import annotations

import unicodedata

from pcloud.errors import BadPath
from pcloud.store.objects import MAX_NAME_BYTES

MAX_PATH_BYTES = 4096
MAX_DEPTH = 255
ROOT = ""


def check_name(name: str, *, path: str | None = None) -> str:
    """Return ``name`` if it is a valid single path component; raise BadPath otherwise.

    ``name`` must already be NFC (use `normalize` for user input); ``path``
    is only used to make the error message name the whole path.
    """
    where = f"{path!r}: " if path is not None and path != name else ""
    if not isinstance(name, str):
        raise BadPath(f"{where}a name must be str, not {type(name).__name__}")
    if name == "":
        raise BadPath(f"{where}empty name (doubled or leading '/'?)")
    if name in (".", ".."):
        raise BadPath(f"{where}{name!r} components are not allowed in vault paths")
    if "/" in name:
        raise BadPath(f"{where}a name cannot contain '/': {name!r}")
    if "\\" in name:
        raise BadPath(f"{where}backslash is not allowed (ambiguous separator): {name!r}")
    if "\x00" in name:
        raise BadPath(f"{where}NUL byte in name {name!r}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadPath(f"{where}name {name!r} is not valid Unicode (lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise BadPath(f"{where}name is {size} bytes, longer than {MAX_NAME_BYTES}")
    return name


def normalize(path: str) -> str:
    """Return the canonical form of vault path ``path`` (``''`` for the root).

    Raises BadPath if the path is absolute, contains ``.``/``..``/empty
    components, a backslash or NUL, is not valid Unicode, or is too long.
    """
    if not isinstance(path, str):
        raise BadPath(f"a vault path must be str, not {type(path).__name__}")
    if path.startswith("/"):
        raise BadPath(f"{path!r}: absolute paths are not allowed; vault paths are relative to the vault root")
    if "\x00" in path:
        raise BadPath(f"{path!r}: NUL byte in path")
    if "\\" in path:
        raise BadPath(f"{path!r}: backslash is not allowed (ambiguous separator); use '/'")
    try:
        raw_size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadPath(f"{path!r}: not valid Unicode (lone surrogate)") from None
    if raw_size > MAX_PATH_BYTES:
        raise BadPath(f"path is {raw_size} bytes, longer than {MAX_PATH_BYTES}")
    text = unicodedata.normalize("NFC", path)
    if text.endswith("/"):
        text = text[:-1]
    if text == "":
        return ROOT
    parts = text.split("/")
    if len(parts) > MAX_DEPTH:
        raise BadPath(f"path is {len(parts)} components deep, more than {MAX_DEPTH}")
    for part in parts:
        check_name(part, path=path)
    return text


def split(path: str) -> list[str]:
    """The names of canonical path ``path`` (``[]`` for the root)."""
    return path.split("/") if path else []


def join(*parts: str) -> str:
    """Join canonical paths/names, skipping empty ones (``join('', 'a')`` is ``'a'``)."""
    return "/".join(p for p in parts if p)


def parent(path: str) -> str:
    """The parent of canonical path ``path``; the root's parent is the root."""
    return path.rsplit("/", 1)[0] if "/" in path else ROOT


def basename(path: str) -> str:
    """The last name of canonical path ``path`` (``''`` for the root)."""
    return path.rsplit("/", 1)[-1]


def is_within(path: str, ancestor: str) -> bool:
    """True if canonical ``path`` equals ``ancestor`` or lies under it."""
    return ancestor == ROOT or path == ancestor or path.startswith(ancestor + "/")
