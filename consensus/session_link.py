"""``RaftLink`` over transport sessions: Raft frames ride authenticated QUIC.

Each Raft frame (``consensus.raft_transport.encode_frame``) is one
fire-and-forget session message of type ``"raft"`` whose body is the frame
bytes. The endpoint authenticates every peer by device key and asks its
``admit`` callable on each connection, so only enrolled devices take part;
revoking a device is ``endpoint.drop_peer`` plus refusing it in ``admit``
(pcloud's job). Who dials whom is also pcloud's job (``endpoint.keep``):
this link only watches sessions come and go (``PeerUp`` / ``PeerDown``).

``block``/``unblock`` stop forwarding to and from a peer without touching the
session: tests use them to cut a minority off.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Protocol

from consensus.raft_transport import LinkHandler
from transport.errors import TransportError
from transport.events import PeerDown, PeerUp

logger = logging.getLogger(__name__)

MSG_TYPE = "raft"


class SessionLike(Protocol):
    state: str

    def send(self, msg_type: str, body: bytes | dict) -> None: ...


class EndpointLike(Protocol):
    """The part of ``transport.endpoint.Endpoint`` this link uses."""

    sessions: dict[bytes, Any]

    def on_message(self, msg_type: str, handler: Callable[[Any, Any], Any]) -> None: ...

    def subscribe(self, callback: Callable[[Any], None]) -> None: ...


class SessionLink:
    """A ``RaftLink`` over an endpoint's sessions. Build it before the RaftNode."""

    def __init__(self, endpoint: EndpointLike) -> None:
        self._endpoint = endpoint
        self._handler: LinkHandler | None = None
        self._blocked: set[bytes] = set()
        self.refused = 0
        endpoint.on_message(MSG_TYPE, self._on_message)
        endpoint.subscribe(self._on_event)

    def set_handler(self, handler: LinkHandler) -> None:
        self._handler = handler
        for peer in self.connected_peers():
            handler.link_up(peer)

    def connected_peers(self) -> set[bytes]:
        return {key for key, s in self._endpoint.sessions.items()
                if s.state == "up" and key not in self._blocked}

    def send(self, peer: bytes, frame: bytes) -> None:
        if peer in self._blocked:
            return
        session = self._endpoint.sessions.get(peer)
        if session is None or session.state != "up":
            return
        try:
            session.send(MSG_TYPE, frame)
        except TransportError as exc:
            # Raft resends whatever matters; a session that just died is reported by PeerDown.
            logger.debug("raft frame to %s not sent: %s", peer.hex()[:12], exc)

    def block(self, peer: bytes) -> None:
        """Stop forwarding Raft frames to and from ``peer`` (tests: partitions)."""
        self._blocked.add(peer)
        if self._handler is not None:
            self._handler.link_down(peer)

    def unblock(self, peer: bytes) -> None:
        self._blocked.discard(peer)
        session = self._endpoint.sessions.get(peer)
        if self._handler is not None and session is not None and session.state == "up":
            self._handler.link_up(peer)

    def _on_event(self, event: Any) -> None:
        if self._handler is None:
            return
        if isinstance(event, PeerUp) and event.peer_id not in self._blocked:
            self._handler.link_up(event.peer_id)
        elif isinstance(event, PeerDown):
            self._handler.link_down(event.peer_id)

    def _on_message(self, session: Any, body: Any) -> None:
        # Plain function, not a coroutine: the session calls it as the datagram is decoded, so
        # a follower's ack leaves in the same endpoint flush (no task, no extra loop iteration).
        peer = session.peer_id
        if peer in self._blocked or self._handler is None:
            return
        if not isinstance(body, bytes):
            self.refused += 1
            logger.warning("raft message from %s is not bytes; dropped", peer.hex()[:12])
            return
        self._handler.link_message(peer, body)
