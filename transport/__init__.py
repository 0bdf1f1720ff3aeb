"""transport — bytes between devices.

One UDP socket per node carries QUIC (driven sans-I/O) plus a small
rendezvous / hole-punch / relay protocol; mDNS finds peers on the LAN.
Peers authenticate by Ed25519 device key (no CA, no passwords).

This layer imports nothing else of pcloud's: it is handed a signing key and
the set of peer keys it may talk to. It knows keys and bytes, not vaults.
"""
