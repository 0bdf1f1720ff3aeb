"""mDNS discovery: real zeroconf instances bound to 127.0.0.1 find each other; the vault tag filters."""
from __future__ import annotations

import asyncio
import os
import time

import pytest
from transport_helpers import wait_for

from transport.discovery import Discovery, PeerFound, PeerLost, parse_txt, vault_hint
from transport.errors import LocalProtocolError

TAG = os.urandom(32)


def test_two_devices_find_each_other_and_strangers_are_ignored() -> None:
    async def main() -> None:
        ka, kb, kc = os.urandom(32), os.urandom(32), os.urandom(32)
        ev_a: list = []
        ev_b: list = []
        a = Discovery(ka, 40001, TAG, ev_a.append)
        b = Discovery(kb, 40002, TAG, ev_b.append)
        other = Discovery(kc, 40003, os.urandom(32), lambda e: None)  # another vault on the same LAN
        t0 = time.monotonic()
        await asyncio.gather(a.start(), b.start(), other.start())
        try:
            await wait_for(lambda: any(isinstance(e, PeerFound) for e in ev_a)
                               and any(isinstance(e, PeerFound) for e in ev_b), 3.0)
            found_after = time.monotonic() - t0
            fa = [e for e in ev_a if isinstance(e, PeerFound)]
            assert {e.peer_id for e in fa} == {kb}
            assert fa[0].port == 40002 and fa[0].addrs == ("127.0.0.1",)
            assert found_after < 2.0, f"LAN discovery took {found_after:.2f}s"
            await asyncio.sleep(0.3)
            assert kc not in {e.peer_id for e in ev_a + ev_b if isinstance(e, PeerFound)}
            await b.close()
            await wait_for(lambda: any(isinstance(e, PeerLost) and e.peer_id == kb for e in ev_a), 3.0)
        finally:
            await asyncio.gather(a.close(), b.close(), other.close())

    asyncio.run(main())


def test_txt_tag_verification() -> None:
    dev, salt = os.urandom(32), os.urandom(8)
    good = {b"v": b"1", b"id": dev.hex().encode(), b"s": salt.hex().encode(),
            b"h": vault_hint(TAG, dev, salt).hex().encode()}
    assert parse_txt(good, TAG) == dev
    assert parse_txt(good, os.urandom(32)) is None  # another vault cannot link it
    for k, v in [(b"v", b"2"), (b"id", b"zz"), (b"s", b"00"), (b"h", None), (b"id", b"\xff\xfe")]:
        assert parse_txt({**good, k: v}, TAG) is None
    # the same device under another salt looks unrelated to a stranger
    assert vault_hint(TAG, dev, salt) != vault_hint(TAG, dev, os.urandom(8))


def test_bad_arguments() -> None:
    with pytest.raises(LocalProtocolError):
        Discovery(b"short", 1, TAG, print)
    with pytest.raises(LocalProtocolError):
        Discovery(os.urandom(32), 1, TAG, print, interfaces="eth0")
