"""labnet's own BGP-4 speaker.

codec (pure wire format) | fsm (RFC 4271 state machine, no sockets) | rib (Adj-RIB-In, Loc-RIB,
Adj-RIB-Out, best path, route reflection, graceful restart) | speaker (asyncio sessions on TCP 179).
"""
