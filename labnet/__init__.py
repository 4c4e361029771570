"""labnet: declarative test labs for container networking.

Kept import-free on purpose: the CNI plugin imports this package once per pod.
"""

__version__ = "0.1.0"
