"""Small JSON files in the vault directory that hold a list of strings (folders.json, pins.json).

Reads are bounded and strict (a clear BadArgument names the file); writes go to a
temp file renamed over the old one, so a crash leaves the old list or the new one.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from . import errors


def read_string_list(path: Path, max_bytes: int, shape: str) -> list[str]:
    """The strings in ``path`` ([] when it does not exist); BadArgument if it is too big or not
    ``a JSON list of <shape>``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    if len(raw) > max_bytes:
        raise errors.BadArgument(f"{path} is larger than {max_bytes} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise errors.BadArgument(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
        raise errors.BadArgument(f"{path} must be a JSON list of {shape}")
    return data


def write_string_list(path: Path, items: list[str]) -> None:
    """Replace ``path`` with ``items`` atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(items, indent=1))
    os.replace(tmp, path)
