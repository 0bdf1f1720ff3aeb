"""pcloud — a personal cloud that runs on your own devices.

    import pcloud
    vault = pcloud.Vault.open()              # or Vault.create(dir, name="laptop")
    vault.write("notes/today.md", "hello")
    print(vault.read("notes/today.md"))

`AsyncVault` is the same API for asyncio code. Errors are in `pcloud.errors`.

The public names are imported on first use (module ``__getattr__``, PEP 562),
so ``import pcloud`` and every CLI call that needs no vault do not pay for the
vault, Raft, QUIC and CRDT imports (~0.35 s). Invariant: ``import pcloud``
imports no third-party module (tests/test_import_time.py).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what static tools see; at run time __getattr__ below imports on demand
    from . import errors
    from .aio import AsyncVault
    from .folders import FolderSync, parse_folder_spec
    from .folders_events import Applied, Committed, ConflictKept, CycleResult, SyncProblem
    from .records import (ChangeInfo, CommitInfo, ConflictInfo, Entry, ExportResult, FsckResult, GcResult,
                          MergeOutcome, VaultStatus, WriteResult)
    from .vault import LiveDocument, Transaction, Vault, VaultFile, default_vault_dir

__version__ = "0.1.0"

# public name -> the submodule that defines it (keep in step with the TYPE_CHECKING imports above)
_WHERE: dict[str, str] = {
    "AsyncVault": ".aio",
    "FolderSync": ".folders", "parse_folder_spec": ".folders",
    **dict.fromkeys(["Applied", "Committed", "ConflictKept", "CycleResult", "SyncProblem"], ".folders_events"),
    **dict.fromkeys(["ChangeInfo", "CommitInfo", "ConflictInfo", "Entry", "ExportResult", "FsckResult", "GcResult",
                     "MergeOutcome", "VaultStatus", "WriteResult"], ".records"),
    **dict.fromkeys(["LiveDocument", "Transaction", "Vault", "VaultFile", "default_vault_dir"], ".vault"),
}

__all__ = [
    "AsyncVault", "Vault", "FolderSync", "parse_folder_spec",
    "Applied", "Committed", "ConflictKept", "CycleResult", "SyncProblem", "Transaction", "LiveDocument", "VaultFile", "default_vault_dir", "errors",
    "ChangeInfo", "CommitInfo", "ConflictInfo", "Entry", "ExportResult", "FsckResult", "GcResult",
    "MergeOutcome", "VaultStatus", "WriteResult",
]


def __getattr__(name: str) -> Any:
    if name == "errors":
        value: Any = importlib.import_module(".errors", __name__)
    elif name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module 'pcloud' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
