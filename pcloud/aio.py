"""AsyncVault: the Vault API for asyncio code, same names and arguments.

The store is blocking disk work, so every call runs on one dedicated worker
thread (which also keeps SQLite on the thread that opened it). Only the
lifecycle differs from `Vault`: `await AsyncVault.open(...)`, `await
v.aclose()`, `async with`.
"""
from __future__ import annotations

import asyncio
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

from . import errors
from .records import (ChangeInfo, CommitInfo, Entry, ExportResult, FsckResult, GcResult, MergeOutcome,
                      VaultStatus, WriteResult)
from .vault import Data, Progress, Vault

T = TypeVar("T")


class AsyncVault:
    """Async twin of `Vault`. Create with `await AsyncVault.open(dir)` or `await AsyncVault.create(dir)`."""

    def __init__(self, vault: Vault, executor: ThreadPoolExecutor) -> None:
        self._vault = vault
        self._executor = executor

    @classmethod
    async def _start(cls, factory: Callable[[], Vault]) -> "AsyncVault":
        ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pcloud-vault")
        try:
            vault = await asyncio.get_running_loop().run_in_executor(ex, factory)
        except BaseException:
            ex.shutdown(wait=False)
            raise
        return cls(vault, ex)

    @classmethod
    async def open(cls, path: str | os.PathLike | None = None) -> "AsyncVault":
        return await cls._start(lambda: Vault.open(path))

    @classmethod
    async def create(cls, path: str | os.PathLike | None = None, *, name: str | None = None) -> "AsyncVault":
        return await cls._start(lambda: Vault.create(path, name=name))

    async def _call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        if self._executor is None:
            raise errors.UsageError("this vault is closed")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kw))

    async def aclose(self) -> None:
        await self._call(self._vault.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> "AsyncVault":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def device_id(self) -> str:
        return self._vault.device_id

    @property
    def vault_id(self) -> str:
        return self._vault.vault_id

    async def write(self, path: str, data: Data, *, message: str | None = None) -> WriteResult:
        return await self._call(self._vault.write, path, data, message=message)

    async def write_many(self, files: dict[str, Data], *, message: str) -> CommitInfo | None:
        """Async form of `with vault.commit(message)`: all of `files` in one commit."""
        def run() -> CommitInfo | None:
            with self._vault.commit(message) as tx:
                for p, d in files.items():
                    tx.write(p, d)
            return tx.result
        return await self._call(run)

    async def read(self, path: str, *, ref: str | None = None) -> bytes:
        return await self._call(self._vault.read, path, ref=ref)

    async def remove(self, path: str, *, message: str | None = None) -> CommitInfo | None:
        return await self._call(self._vault.remove, path, message=message)

    async def move(self, src: str, dst: str, *, message: str | None = None) -> CommitInfo | None:
        return await self._call(self._vault.move, src, dst, message=message)

    async def ls(self, path: str = "", *, ref: str | None = None, recursive: bool = False) -> list[Entry]:
        return await self._call(self._vault.ls, path, ref=ref, recursive=recursive)

    async def stat(self, path: str, *, ref: str | None = None) -> Entry:
        return await self._call(self._vault.stat, path, ref=ref)

    async def exists(self, path: str, *, ref: str | None = None) -> bool:
        return await self._call(self._vault.exists, path, ref=ref)

    async def import_path(self, src: str | os.PathLike, dest: str = "", *, message: str | None = None,
                          progress: Progress | None = None) -> WriteResult:
        return await self._call(self._vault.import_path, src, dest, message=message, progress=progress)

    async def export(self, path: str, dest: str | os.PathLike, *, ref: str | None = None,
                     progress: Progress | None = None) -> ExportResult:
        return await self._call(self._vault.export, path, dest, ref=ref, progress=progress)

    async def log(self, limit: int | None = None, *, branch: str | None = None) -> list[CommitInfo]:
        return await self._call(self._vault.log, limit, branch=branch)

    async def branches(self) -> dict[str, str]:
        return await self._call(self._vault.branches)

    async def create_branch(self, name: str, start: str | None = None) -> str:
        return await self._call(self._vault.create_branch, name, start)

    async def switch(self, name: str) -> None:
        return await self._call(self._vault.switch, name)

    async def merge(self, source: str, *, into: str | None = None, message: str | None = None) -> MergeOutcome:
        return await self._call(self._vault.merge, source, into=into, message=message)

    async def diff(self, a: str | None = None, b: str | None = None) -> list[ChangeInfo]:
        return await self._call(self._vault.diff, a, b)

    async def doc_json(self, path: str) -> dict:
        """The document's state as JSON, committed plus the live updates its node holds."""
        def read() -> dict:
            d = self._vault.doc(path, create=False)
            try:
                return d.to_json()
            finally:
                d.close()         # ends its live link (a thread and two control connections)
        return await self._call(read)

    async def fsck(self) -> FsckResult:
        return await self._call(self._vault.fsck)

    async def gc(self) -> GcResult:
        return await self._call(self._vault.gc)

    async def status(self) -> VaultStatus:
        return await self._call(self._vault.status)

    async def run(self, fn: Callable[[Vault], T]) -> T:
        """Run `fn(vault)` on the vault's thread: for edits spanning several calls (e.g. documents)."""
        return await self._call(fn, self._vault)
