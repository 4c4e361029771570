"""labnet-agent: the per-node daemon (registration, tunnel, BGP, routes, NAT, status).

`labnet.agent.tunnel` is the tunnel datapath; `config.AgentConfig` is the file the lab writes;
`status.query_status(ns)` and `status.format_bgp_status(doc)` serve the lab and the CLI.
"""
