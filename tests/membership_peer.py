"""One membership ``Device`` in its own process (netlab hosts), driven by JSON lines on stdin.

``python tests/membership_peer.py VAULT_DIR HOST PORT`` prints ``{"ready": true, "key": hex, "address": ...}``,
then answers one JSON line per request line: ``{"op": "invite", "trust": ...}`` -> ``{"code": ...}``;
``{"op": "devices"}`` -> ``{"devices": [...]}``; ``{"op": "sessions"}`` -> ``{"sessions": [hex, ...]}``;
``{"op": "keep", "key": hex, "addr": "HOST:PORT"}`` -> ``{}``. Errors come back as ``{"error": str}``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from membership_helpers import Device  # noqa: E402


async def main(vault_dir: str, host: str, port: int) -> None:
    dev = await Device(Path(vault_dir), host=host, port=port).start()
    print(json.dumps({"ready": True, "key": dev.key.hex(), "address": dev.address}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        req = json.loads(line)
        try:
            op = req["op"]
            if op == "invite":
                out = (await dev.membership.invite(req.get("trust", "member"), 600)).to_json()
                out.pop("qr")
            elif op == "devices":
                out = {"devices": [d.to_json() for d in dev.membership.devices()]}
            elif op == "sessions":
                out = {"sessions": [k.hex() for k, s in dev.endpoint.sessions.items() if s.state == "up"]}
            elif op == "keep":
                h, p = req["addr"].rsplit(":", 1)
                dev.endpoint.keep(bytes.fromhex(req["key"]), [(h, int(p))])
                out = {}
            else:
                out = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the test, which fails with it
            out = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(out), flush=True)
    await dev.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
