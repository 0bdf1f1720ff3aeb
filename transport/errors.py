"""Errors raised by the transport layer.

    TransportError
    ├── ProtocolError               a message broke the wire rules
    │   ├── LocalProtocolError      we were asked to send something invalid
    │   └── RemoteProtocolError     the peer sent something invalid (ends its session, never the node)
    │       └── MessageTooLarge     a frame or field passed its size limit
    ├── AuthenticationError         the peer is not the device we expected (unknown, revoked, impostor)
    ├── PeerUnreachable             no path to the peer (LAN, direct, relay all failed)
    ├── SessionClosed               the session ended while a request was outstanding
    ├── RequestTimeout              no response within the deadline
    ├── RequestFailed               the peer answered a request with an error (code, message)
    └── SendBufferFull              the peer is not taking control messages; nothing was queued
"""
from __future__ import annotations


class TransportError(Exception):
    """Base class of every transport failure."""


class ProtocolError(TransportError):
    """A message broke the wire rules."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something malformed; its session ends, the node goes on."""


class MessageTooLarge(RemoteProtocolError):
    """A frame or field passed its size limit."""


class AuthenticationError(TransportError):
    """The peer did not prove the device key we expected."""


class PeerUnreachable(TransportError):
    """No path to the peer could be opened."""


class SessionClosed(TransportError):
    """The session ended while work on it was outstanding."""


class RequestTimeout(TransportError):
    """No response arrived within the deadline."""


class RequestFailed(TransportError):
    """The peer answered a request with an error response.

    `code` is one of a small closed set ('unknown_type', 'busy', 'handler_error') or a
    code chosen by the peer's handler; `message` is the peer's sentence.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class SendBufferFull(TransportError):
    """The peer is not keeping up: the control stream's send buffer is at its limit, nothing was queued."""
