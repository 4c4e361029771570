"""Topology files: parse with positions, validate, fill defaults.

Never imported by the CNI plugin (pydantic and PyYAML cost import time on every pod ADD).
"""

from labnet.topology.loader import Diagnostic, TopologyError, load, loads
from labnet.topology.model import Topology

__all__ = ["Diagnostic", "Topology", "TopologyError", "load", "loads"]
