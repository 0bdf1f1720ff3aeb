"""replication — moving sealed objects and document updates between devices.

Owns the sealed-envelope format every node reads (a cleartext header with the
object id and the ids it references, and an AEAD body it may not be able to
open), the have/want exchange that walks commit graphs through those headers,
document update logs numbered per device, and per-device policies
(full, on-demand, archive).

Imports `transport` only; the object store it reads and writes is declared
here as a `typing.Protocol` that `pcloud.store` implements.

Modules (one concept each):

* ``envelope``  the sealed envelope wire format
* ``stores``    Protocols: SealedObjectStore (pcloud.store.ObjectStore), DocumentLog, DocMerger
* ``policy``    Policy (full / on-demand / archive) and fetch priorities
* ``want``      WantPlanner: what is missing, in which order, when to store (sans-I/O)
* ``protocol``  message types, bodies, limits, error codes (strict decoders)
* ``fetcher``   Replicator: serves objects and fetches them over transport sessions
* ``doclog``    SqliteDocumentLog: sealed document update logs and checkpoints (no key needed)
* ``docsync``   DocSync: state-vector exchange, catch-up by seq, live push, compaction

Wiring (what pcloud.node does)::

    rep = Replicator(endpoint, vault.store, Policy.named(policy_name),
                     verify=lambda oid, data: sealing.open_verified(keyring, data, oid),  # None on the cloud node
                     invalid_errors=(IntegrityError,), peer_rank=rank)
    rep.serve()
    docs = DocSync(endpoint, SqliteDocumentLog(vault_dir / "doclog.sqlite"),
                   merger=DocMerger(keyring))                          # None on the cloud node
    docs.serve()
    endpoint.on_session(lambda s: (docs.peer_up(s), spawn(rep.sync([main_head]))))
    # when Raft moves main:          await rep.sync([new_head])
    # when a file is opened on-demand: await rep.fetch_now([blob_id])
    # pcloud status:                  rep.progress().as_json()
"""
from __future__ import annotations

from transport.lazy import lazy_exports

# Lazy re-exports: pcloud.store imports replication.envelope on every start, and must not pay
# for (or cycle through) the transport stack that the fetcher pulls in.
_EXPORTS = {
    "Replicator": "fetcher", "SyncResult": "fetcher", "Progress": "fetcher", "PeerCounters": "fetcher",
    "rank_by_path": "fetcher", "missing_error": "fetcher",
    "Policy": "policy", "Mode": "policy", "WantPlanner": "want",
    "DocSync": "docsync", "DocStats": "docsync", "DocUpdate": "protocol", "Checkpoint": "protocol",
    "SqliteDocumentLog": "doclog", "DocumentLog": "stores", "DocMerger": "stores", "SealedObjectStore": "stores",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
