"""`import pcloud` stays cheap: heavy dependencies load only when a feature needs them.

Every CLI call and every app that imports pcloud pays for what `import pcloud`
pulls in, so the check is on sys.modules in a fresh interpreter (deterministic),
not on a timing.
"""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("textual", "qh3", "aioquic", "zeroconf", "pycrdt", "pysyncobj", "rich", "sqlite_utils",
         "cryptography", "nacl", "consensus", "transport")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(out.stdout.splitlines()[-1]))


def _roots(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_import_pcloud_loads_no_heavy_dependency():
    loaded = _roots(_modules_after("import pcloud"))
    assert loaded.isdisjoint(HEAVY), f"`import pcloud` imported {sorted(loaded & set(HEAVY))}"


def test_import_pcloud_loads_no_pcloud_submodule():
    loaded = {m for m in _modules_after("import pcloud") if m.startswith("pcloud.")}
    assert loaded == set(), f"`import pcloud` imported {sorted(loaded)}"


def test_public_name_is_imported_on_first_use():
    # The lazy path must load the real class, and the control shows the check can fail.
    loaded = _modules_after("import pcloud\nassert pcloud.Vault.__module__ == 'pcloud.vault'")
    assert "pcloud.vault" in loaded and "pycrdt" in _roots(loaded)


def test_the_cli_and_the_error_types_load_no_network_or_raft_stack():
    """`pcloud --help` and every usage error import the CLI and pcloud.errors (which names the
    consensus and transport errors): the QUIC engine, pysyncobj and the rest load only on use."""
    loaded = _roots(_modules_after("import pcloud.cli, pcloud.errors"))
    network = {"qh3", "aioquic", "zeroconf", "pysyncobj", "pycrdt", "textual", "cryptography", "nacl"}
    assert loaded.isdisjoint(network), f"imported {sorted(loaded & network)}"
