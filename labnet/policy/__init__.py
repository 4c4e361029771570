"""Network policy: pod labels, Calico-style selectors, ordered allow/deny rules for ingress and
egress, nftables enforcement, the model's verdicts, and generated cases with their truth tables.

The seed's third problem (Frederic LOUI's comment): with a default-drop policy nothing gets
through until traffic is explicitly allowed, and the only way to see why was reading
`iptables-save` jump sequences. labnet enforces policy in one nft table per node and
`explain_drop` names the policy (or the default) that drops a packet, from the model and from
the rule counters that moved.

Semantics, as Calico (and Kubernetes NetworkPolicy) apply them (egress: labnet.policy.model):
- default `deny`: a packet to a pod is dropped unless a rule of a policy selecting that pod
  allows it ("policy=default-deny");
- default `allow`: pods no policy selects accept everything; a pod some policy selects is
  isolated and only accepts what those policies allow ("policy=end-of-policies"). Otherwise a
  policy under allow-all would silently do nothing;
- replies (conntrack established/related) always pass; the node itself always reaches its pods
  and pods always reach their node (FELIX_DEFAULTENDPOINTTOHOSTACTION=ACCEPT in the seed).
"""

from labnet.policy.explain import Verdict, evaluate, explain_drop
from labnet.policy.model import Peer, PolicySettings, PolicySpec, Rule
from labnet.policy.nft import PodInfo, RuleCounter, apply, node_counters, remove, render, ruleset
from labnet.policy.selector import Selector, SelectorError, parse

__all__ = [
    "Peer",
    "PodInfo",
    "PolicySettings",
    "PolicySpec",
    "Rule",
    "RuleCounter",
    "Selector",
    "SelectorError",
    "Verdict",
    "apply",
    "evaluate",
    "explain_drop",
    "node_counters",
    "parse",
    "remove",
    "render",
    "ruleset",
]
