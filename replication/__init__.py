"""replication — moving sealed objects and document updates between devices.

Owns the sealed-envelope format every node reads (a cleartext header with the
object id and the ids it references, and an AEAD body it may not be able to
open), the have/want exchange that walks commit graphs through those headers,
document update logs numbered per device, and per-device policies
(full, on-demand, archive).

Imports `transport` only; the object store it reads and writes is declared
here as a `typing.Protocol` that `pcloud.store` implements.
"""
