"""A set-up hook for every Ray worker of the local cluster `openserve up` starts (`worker_process_setup_hook`).

With the node address 127.0.0.1 Ray binds its own servers to loopback, but each Serve replica opens the gRPC server
that handles use for direct calls (`_by_reference=False`) on every interface ("[::]:0", hard-coded in Ray 2.60's
replica). It checks Ray's token, yet nothing outside the machine needs to reach it: bind it to loopback too.
"""
from __future__ import annotations

import logging

LOOPBACK = "127.0.0.1"
_ANY_INTERFACE = "[::]:"

log = logging.getLogger(__name__)


def serve_replicas_on_loopback() -> None:
    """Make Serve replicas started in this worker bind their gRPC server to 127.0.0.1 instead of every interface."""
    from ray.serve._private import replica

    bind = getattr(replica, "add_port_to_grpc_server", None)
    if bind is None:  # another Ray release: the socket test in tests/e2e says whether its replicas need this
        log.warning("Ray's replica module changed; its gRPC server keeps Ray's own address")
        return

    def on_loopback(server, address: str) -> int:
        if address.startswith(_ANY_INTERFACE):
            address = f"{LOOPBACK}:{address[len(_ANY_INTERFACE):]}"
        return bind(server, address)

    replica.add_port_to_grpc_server = on_loopback
