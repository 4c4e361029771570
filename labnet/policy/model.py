"""The policy model: a lab-wide default plus policies of ordered allow/deny rules, ingress and
egress. Self-contained (pydantic only).

The topology schema embeds `PolicySettings` as `cluster.policy`:

    policy:
      default: deny                 # or allow (the default)
      policies:
        - name: allow-client
          selector: app == 'web'    # the pods this policy applies to
          ingress:
            - {action: deny, from: {namespace_selector: projectcalico.org/name == 'dev'}}
            - {protocol: icmp, from: {selector: app == 'client'}}
            - {protocol: tcp, ports: [80, "8000:8080"], from: {cidr: 10.20.30.0/24}}
          egress:                   # present: the selected pods' egress is isolated too
            - {protocol: tcp, ports: [5432], to: {selector: app == 'db'}}

Semantics (Calico's, see labnet/policy/__init__.py): the first rule that matches decides, in
the order of the policies and of their rules (`action: allow` or `deny`); a packet no rule
matches meets the default. Ingress: with `default: allow` a pod that no policy selects accepts
everything, while a pod that some policy selects only accepts what those policies allow
(Calico's end-of-tier drop, Kubernetes' "isolated" pod). Egress is isolated only for pods a
policy with an `egress` list selects (an empty list: no egress at all), as Kubernetes'
policyTypes: Egress; a policy with egress rules and no ingress rules leaves ingress alone. A pod's labels include `projectcalico.org/namespace: <its namespace>`, and
a namespace's labels are `projectcalico.org/name: <its name>`, as Calico sets them.
"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from labnet.policy.selector import Selector, SelectorError, parse

# Names that label the built-in verdicts in nft comments and in explain_drop output.
RESERVED_NAMES = frozenset({"default-deny", "default-allow", "end-of-policies", "established"})
POLICY_NAME_RE = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"


def _check_selector(value: Any) -> Any:
    if isinstance(value, str):
        try:
            parse(value)
        except SelectorError as exc:
            raise ValueError(str(exc)) from None
    return value


SelectorText = Annotated[
    str,
    BeforeValidator(_check_selector),
    Field(description="Calico-style label selector, e.g. app == 'web' && role in {'a', 'b'}, has(x), all()"),
]


def _port(value: Any) -> Any:
    """A port (80) or an inclusive range ("8000:8080", Calico's spelling); returned as (lo, hi)."""
    if isinstance(value, bool):
        raise ValueError(f"port {value!r} is not a number")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, str):
        lo_s, sep, hi_s = value.partition(":")
        if not (lo_s.strip().isdigit() and (not sep or hi_s.strip().isdigit())):
            raise ValueError(f"port {value!r} is neither a number nor a range like \"8000:8080\"")
        lo = int(lo_s)
        hi = int(hi_s) if sep else lo
    else:
        raise ValueError(f"port {value!r} is neither a number nor a range like \"8000:8080\"")
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        raise ValueError(f"port {value!r} is outside 1..65535")
    if lo > hi:
        raise ValueError(f"port range {value!r} runs backwards")
    return value


Port = Annotated[int | str, BeforeValidator(_port)]


def port_range(value: int | str) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    lo, _, hi = value.partition(":")
    return int(lo), int(hi or lo)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Peer(_Model):
    """The other end of a rule: pods matching `selector`, pods of the namespaces matching
    `namespace_selector`, addresses in `cidr`; what is given must all hold (AND)."""

    selector: SelectorText | None = None
    namespace_selector: SelectorText | None = None
    cidr: IPv4Network | IPv6Network | None = None

    @field_validator("cidr", mode="before")
    @classmethod
    def _strict_cidr(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return ip_network(value)
            except ValueError as exc:
                raise ValueError(f"cidr {value!r} is not an IP network like 10.0.0.0/24 or fd00::/64 "
                                 f"({exc})") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Peer:
        if self.selector is None and self.namespace_selector is None and self.cidr is None:
            raise ValueError("a peer needs a selector, a namespace_selector or a cidr (leave 'from'/'to' out to "
                             "match any)")
        return self

    @property
    def selects_pods(self) -> bool:
        return self.selector is not None or self.namespace_selector is not None


class Rule(_Model):
    action: Literal["allow", "deny"] = "allow"
    protocol: Literal["tcp", "udp", "icmp"] | None = None
    from_: Peer | None = Field(default=None, alias="from", description="ingress rules: where from")
    to: Peer | None = Field(default=None, description="egress rules: where to")
    ports: list[Port] | None = None

    @model_validator(mode="after")
    def _ports_need_l4(self) -> Rule:
        if self.ports is not None:
            if self.protocol not in ("tcp", "udp"):
                raise ValueError(f"ports need protocol tcp or udp (protocol is {self.protocol or 'not set'})")
            if not self.ports:
                raise ValueError("ports is empty; leave it out to allow every port")
        return self

    def port_ranges(self) -> list[tuple[int, int]]:
        return [port_range(p) for p in self.ports or ()]


class PolicySpec(_Model):
    name: str = Field(pattern=POLICY_NAME_RE, description="lowercase DNS label; shows in nft comments")
    selector: SelectorText = "all()"
    ingress: list[Rule] = []
    egress: list[Rule] | None = Field(default=None, description="present: the selected pods' egress is isolated "
                                      "and only these rules let traffic out")

    @model_validator(mode="after")
    def _directions(self) -> PolicySpec:
        if any(r.to is not None for r in self.ingress):
            raise ValueError(f"policy {self.name}: an ingress rule has 'to'; ingress rules say 'from'")
        if any(r.from_ is not None for r in self.egress or ()):
            raise ValueError(f"policy {self.name}: an egress rule has 'from'; egress rules say 'to'")
        return self

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in RESERVED_NAMES:
            raise ValueError(f"policy name {value!r} is reserved (it names a built-in verdict)")
        return value

    def target(self) -> Selector:
        return parse(self.selector)

    @property
    def ingress_isolating(self) -> bool:
        """Whether it isolates its pods' ingress: it has ingress rules, or no egress list (a
        policy of egress rules only leaves ingress alone, as Calico's types default)."""
        return bool(self.ingress) or self.egress is None


class PolicySettings(_Model):
    default: Literal["allow", "deny"] = "allow"
    policies: list[PolicySpec] = []

    @model_validator(mode="after")
    def _unique_names(self) -> PolicySettings:
        seen: set[str] = set()
        for p in self.policies:
            if p.name in seen:
                raise ValueError(f"policy name {p.name!r} is used twice")
            seen.add(p.name)
        return self
