"""labnet-agent: the per-node daemon, the seed's calico-node (registration, tunnel, BGP, routes, NAT).

How the lab starts it, inside the node's namespaces (net + mount + UTS):

    AgentConfig(etcd=EtcdSettings([...endpoints], ca_file, cert_file, key_file),
                bgp_address="first-found", log_file="/var/log/labnet/agent.log")
        .save(<host path of the node's /var/lib/labnet/agent.json>)
    labnet-agent run --config /var/lib/labnet/agent.json
      = python -m labnet.agent.main run --config /var/lib/labnet/agent.json
    the node's process (labnet.agent.node): the agent, the CNI server (cni_socket in the config)
    and the userspace tunl0, in one process. On the netns runtime the lab's supervisor
    (labnet.lab.supervisor) forks it and restarts it; elsewhere (docker) `labnet-agent
    supervise --config ...` runs beside it in the node and does.

Status: `labnet-agent status [--json]` inside the node, or `status.query_status(ns)` from the
host; `status.format_bgp_status(doc)` prints calicoctl's table. The socket protocol is in
`labnet.agent.status`. Modules: config (files and settings), detect (BGP address), nodes
(records, name checks), peers, routes (desired state), kernel (netlink), nat (nftables),
daemon (the loop), node (the node's one process), main (CLI, supervisor). `labnet.agent.tunnel` is the tunnel datapath.
"""
