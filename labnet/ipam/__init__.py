"""Block-affinity IPAM (Calico's model) over the Datastore Protocol.

The agent calls `tunnel_address`; checks and doctor call `blocks_of` and `usage`; the CNI
IPAM plugin calls `first_read`, `auto_assign`, `assign_ip` (a requested address), `lookup`, `release` and `gc`.
"""

from labnet.ipam.allocator import (
    AddressUnavailable,
    Assignment,
    Block,
    IpamConflict,
    IpamError,
    Pool,
    PoolExhausted,
    assign_ip,
    auto_assign,
    blocks_of,
    cluster_pool,
    first_read,
    gc,
    lookup,
    release,
    tunnel_address,
    tunnel_handle,
    usage,
)

__all__ = [
    "AddressUnavailable", "Assignment", "Block", "IpamConflict", "IpamError", "Pool", "PoolExhausted",
    "assign_ip", "auto_assign",
    "blocks_of", "cluster_pool", "first_read", "gc", "lookup", "release", "tunnel_address", "tunnel_handle", "usage",
]
