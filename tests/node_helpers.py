"""Real `pcloud serve` / `pcloud relay` processes on loopback for end-to-end tests."""
from __future__ import annotations

import json
from pathlib import Path

from pcloud.nodeproc import NodeProc, enroll, free_port, wait_for
from pcloud.vault import Vault


def start_cluster(base: Path, names: tuple[str, ...] = ("laptop", "phone", "cloud")) -> dict[str, NodeProc]:
    """names[0] (owner) + the others, all voters; 'cloud' is a key-less storage node running the relay."""
    relay = f"127.0.0.1:{free_port()}"
    Vault.create(base / names[0], name=names[0]).close()
    nodes = {names[0]: NodeProc(names[0], base / names[0], ["serve", "--relay", relay], base).start()}
    wait_for("leader", lambda: nodes[names[0]].status()["raft"]["role"] == "leader")
    for name in names[1:]:
        storage = name == "cloud"
        enroll(nodes[names[0]], base / name, name, trust="storage" if storage else "member", voter=True)
        argv = ["relay", "--listen", relay] if storage else ["serve", "--relay", relay]
        nodes[name] = NodeProc(name, base / name, argv, base).start()
    wait_for("every device voting", lambda: all(
        n.status()["raft"]["role"] in ("leader", "follower") for n in nodes.values())
        and len(nodes[names[0]].status()["peers"]) == len(names) - 1, 30)
    return nodes


def start_laptop(base: Path) -> tuple[dict[str, NodeProc], str]:
    """A laptop that owns a new vault and leads its Raft; returns the nodes and its relay address."""
    relay = f"127.0.0.1:{free_port()}"
    Vault.create(base / "laptop", name="laptop").close()
    nodes = {"laptop": NodeProc("laptop", base / "laptop", ["serve", "--relay", relay], base).start()}
    wait_for("leader", lambda: nodes["laptop"].status()["raft"]["role"] == "leader")
    return nodes, relay


def start_on_demand_phone(base: Path, nodes: dict[str, NodeProc], relay: str) -> NodeProc:
    """Enroll a non-voting phone through the laptop and run it with the on-demand policy."""
    enroll(nodes["laptop"], base / "phone", "phone", voter=False)
    cfg = base / "phone.json"
    cfg.write_text(json.dumps({"policy": "on-demand", "relays": [relay]}))
    nodes["phone"] = NodeProc("phone", base / "phone", ["serve", "--config", str(cfg)], base).start()
    return nodes["phone"]


def kill_all(nodes: dict[str, NodeProc]) -> None:
    for n in nodes.values():
        n.kill()
