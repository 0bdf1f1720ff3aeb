"""pcloud — a personal cloud that runs on your own devices.

    import pcloud
    vault = pcloud.Vault.open()              # or Vault.create(dir, name="laptop")
    vault.write("notes/today.md", "hello")
    print(vault.read("notes/today.md"))

`AsyncVault` is the same API for asyncio code. Errors are in `pcloud.errors`.
"""
from . import errors
from .aio import AsyncVault
from .folders import FolderSync, parse_folder_spec
from .folders_events import Applied, Committed, ConflictKept, CycleResult, SyncProblem
from .records import (ChangeInfo, CommitInfo, ConflictInfo, Entry, ExportResult, FsckResult, GcResult,
                      MergeOutcome, VaultStatus, WriteResult)
from .vault import LiveDocument, Transaction, Vault, VaultFile, default_vault_dir

__version__ = "0.1.0"

__all__ = [
    "AsyncVault", "Vault", "FolderSync", "parse_folder_spec",
    "Applied", "Committed", "ConflictKept", "CycleResult", "SyncProblem", "Transaction", "LiveDocument", "VaultFile", "default_vault_dir", "errors",
    "ChangeInfo", "CommitInfo", "ConflictInfo", "Entry", "ExportResult", "FsckResult", "GcResult",
    "MergeOutcome", "VaultStatus", "WriteResult",
]
