"""labnet's CNI plugins (`labnet`, `labnet-ipam`), their install step and the runtime side.

Kept empty on purpose: every plugin run imports this package, so nothing heavy goes here.
"""
