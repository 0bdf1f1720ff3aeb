"""Lazy package re-exports (PEP 562), shared by the layers' ``__init__`` modules.

A package lists ``name -> submodule``; a name is imported on first use. So
``import pcloud.errors`` (every CLI call) does not load the QUIC engine, pysyncobj
or cryptography just because a package ``__init__`` re-exports them.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` for ``package`` whose public names live in ``exports``."""
    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
