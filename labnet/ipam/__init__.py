"""Block-affinity IPAM (Calico's model) over the Datastore Protocol, IPv4 and IPv6 pools.

The agent calls `tunnel_address` (version 6: vxlan-v6.calico's); checks and doctor call
`blocks_of` and `usage`; the CNI IPAM plugin calls `cluster_pools`, `first_read`,
`auto_assign` and `assign_ip` (a requested address) once per pool with one handle, `lookup`,
`release` (both families) and `gc`.
"""

from labnet.ipam.allocator import (
    AddressUnavailable,
    Assignment,
    Block,
    IpamConflict,
    IpamError,
    Pool,
    PoolExhausted,
    Walk,
    assign_ip,
    auto_assign,
    blocks_of,
    cluster_pool,
    cluster_pool6,
    cluster_pools,
    first_read,
    gc,
    lookup,
    release,
    tunnel_address,
    tunnel_handle,
    usage,
)

__all__ = [
    "AddressUnavailable", "Assignment", "Block", "IpamConflict", "IpamError", "Pool", "PoolExhausted", "Walk",
    "assign_ip", "auto_assign",
    "blocks_of", "cluster_pool", "cluster_pool6", "cluster_pools", "first_read", "gc", "lookup", "release",
    "tunnel_address", "tunnel_handle", "usage",
]
