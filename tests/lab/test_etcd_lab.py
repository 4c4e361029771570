"""Real etcd (3.4, /usr/bin/etcd) with the lab's PKI, inside throw-away namespaces.

The test process stays in the root namespace; client code that must reach etcd runs in a
thread that entered the etcd node's network namespace (labnet.etcd.netns).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from _labtools import REPO, lab_exec, lab_pids, labnet, snapshot

from labnet import paths
from labnet.etcd import server
from labnet.etcd.admin import with_store
from labnet.etcd.client import EtcdStore
from labnet.etcd.netns import call_in_netns, thread_in_netns
from labnet.etcd.pki import Pki, ensure_pki
from labnet.etcd.server import EtcdMember, EtcdStartError
from labnet.etcd.store import Conflict, DatastoreUnavailable, EtcdConfig, Event, LeaseExpired
from labnet.lab import state as labmod
from labnet.lab.phases.etcd import ETCD_DATA_INSIDE
from labnet.nsexec import NodeNS, pid_alive, run
from labnet.runtime import get_runtime
from labnet.wait import poll

ADDR = "10.99.0.1"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    return ensure_pki(d, "t", [("etcd-1", ADDR), ("etcd-2", "10.99.0.2"), ("etcd-3", "10.99.0.3")],
                      ["node-a", "node-b"])


@pytest.fixture(scope="module")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another lab's CA: its certificates must not open this lab's etcd."""
    return ensure_pki(tmp_path_factory.mktemp("foreign"), "other", [("etcd-1", ADDR)], ["node-a"])


class Single:
    def __init__(self, ns: NodeNS, member: EtcdMember, pki: Pki, data: Path, log: Path) -> None:
        self.ns, self.member, self.pki, self.data, self.log = ns, member, pki, data, log
        self.config = server.client_config([member], pki)

    def start(self, track: object) -> int:
        pid = server.start_member(self.ns, self.member, [self.member], self.pki, self.data, self.log)
        track(pid)  # type: ignore[operator]
        server.wait_healthy(self.config, 30, netns=self.ns.netns, pids={pid: self.log})
        return pid


@pytest.fixture
def etcd1(netns_factory, pki: Pki, tmp_path: Path) -> tuple[Single, int]:  # type: ignore[no-untyped-def]
    ns = netns_factory("etcd")
    run(ns, ["ip", "addr", "add", f"{ADDR}/32", "dev", "lo"])
    s = Single(ns, EtcdMember("etcd-1", ADDR), pki, tmp_path / "data", tmp_path / "etcd.log")
    pid = s.start(netns_factory.track_pid)
    return s, pid


def curl(ns: NodeNS, pki: Pki, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(ns, ["curl", "-sS", "--noproxy", "*", "--max-time", "5", "--cacert", str(pki.ca_cert), *extra,
                    f"https://{ADDR}:2379/health"], check=False)


def test_client_cert_required_and_from_this_lab_ca(etcd1: tuple[Single, int], pki: Pki,
                                                   foreign_pki: Pki) -> None:
    s, _ = etcd1
    ok = curl(s.ns, pki, "--cert", str(pki.admin.cert), "--key", str(pki.admin.key))
    assert ok.returncode == 0 and '"health":"true"' in ok.stdout.replace(" ", ""), ok
    node = curl(s.ns, pki, "--cert", str(pki.nodes["node-b"].cert), "--key", str(pki.nodes["node-b"].key))
    assert node.returncode == 0, f"node-b's client cert was refused: {node.stderr}"

    none = curl(s.ns, pki)
    assert none.returncode != 0, f"etcd answered a request without client certificate: {none.stdout}"
    other = curl(s.ns, pki, "--cert", str(foreign_pki.admin.cert), "--key", str(foreign_pki.admin.key))
    assert other.returncode != 0, f"etcd accepted a client cert from another CA: {other.stdout}"

    # The same with Python's ssl: the handshake (or the first read, with TLS 1.3) fails.
    def handshake(cert: tuple[str, str] | None) -> str:
        ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        if cert:
            ctx.load_cert_chain(*cert)
        with socket.create_connection((ADDR, 2379), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=ADDR) as tls:
            tls.sendall(f"GET /health HTTP/1.1\r\nHost: {ADDR}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
            return data.decode(errors="replace")

    for cert, who in [(None, "no client cert"), ((str(foreign_pki.admin.cert), str(foreign_pki.admin.key)),
                                                 "another CA's cert")]:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            answer = call_in_netns(s.ns.netns, handshake, cert)
            pytest.fail(f"{who}: etcd answered {answer[:200]!r}")
    answer = call_in_netns(s.ns.netns, handshake, (str(pki.admin.cert), str(pki.admin.key)))
    assert "200 OK" in answer, answer

    # The store with the foreign cert cannot reach the datastore.
    bad = EtcdConfig(endpoints=s.config.endpoints, ca_file=str(pki.ca_cert),
                     cert_file=str(foreign_pki.admin.cert), key_file=str(foreign_pki.admin.key))
    with pytest.raises(DatastoreUnavailable):
        call_in_netns(s.ns.netns, lambda: EtcdStore(bad).get("/x"))


def test_store_operations(etcd1: tuple[Single, int]) -> None:
    s, _ = etcd1

    def body() -> None:
        with EtcdStore(s.config) as st:
            assert st.get("/labnet/t/a") is None
            rev = st.put("/labnet/t/a", b"1")
            kv = st.get("/labnet/t/a")
            assert kv is not None and kv.value == b"1" and kv.mod_revision == rev
            st.put("/labnet/t/b/ü", "zwei")
            st.put("/labnet/tx", "not under /labnet/t/")
            assert [k.key for k in st.range("/labnet/t/")] == ["/labnet/t/a", "/labnet/t/b/ü"]
            assert st.get("/labnet/t/b/ü").text() == "zwei"  # type: ignore[union-attr]
            # cas: 0 means "must not exist"
            assert st.cas("/labnet/t/new", "x", 0) is True
            assert st.cas("/labnet/t/new", "y", 0) is False
            assert st.cas("/labnet/t/a", "2", rev) is True
            assert st.cas("/labnet/t/a", "3", rev) is False
            with pytest.raises(Conflict, match="/labnet/t/a: expected mod_revision"):
                st.cas_or_raise("/labnet/t/a", "3", rev)
            cur = st.get("/labnet/t/a")
            assert cur is not None
            assert st.delete("/labnet/t/a", cur.mod_revision - 1) is False
            assert st.delete("/labnet/t/a", cur.mod_revision) is True
            assert st.delete("/labnet/t/a") is False
            assert st.delete_prefix("/labnet/t/") == 2
            assert st.range("/labnet/t/") == []
            # leases: a key with a lease goes when the lease is revoked
            lease = st.grant_lease(30)
            st.put("/labnet/t/leased", "v", lease=lease)
            st.keepalive(lease)
            st.revoke_lease(lease)
            assert st.get("/labnet/t/leased") is None
            with pytest.raises(LeaseExpired):
                st.keepalive(lease)
            with pytest.raises(LeaseExpired, match="lease not found"):
                st.put("/labnet/t/leased", "v", lease=lease)

    call_in_netns(s.ns.netns, body)


def test_snapshot_and_cas_many(etcd1: tuple[Single, int]) -> None:
    """The two primitives the CNI ADD path lives on, against the real etcd: a multi-key read at
    one revision, and an all-or-nothing write compared on every key's revision."""
    s, _ = etcd1

    def body() -> None:
        with EtcdStore(s.config) as st:
            st.delete_prefix("/labnet/m/")
            ra = st.put("/labnet/m/a", "1")
            st.put("/labnet/m/p/x", "x")
            st.put("/labnet/m/p/y", "y")
            snap = st.snapshot(["/labnet/m/a", "/labnet/m/absent"], ["/labnet/m/p/"])
            a = snap.keys["/labnet/m/a"]
            assert a is not None and (a.value, a.mod_revision) == (b"1", ra), snap
            assert snap.keys["/labnet/m/absent"] is None, snap
            assert [kv.key for kv in snap.prefixes["/labnet/m/p/"]] == ["/labnet/m/p/x", "/labnet/m/p/y"], snap
            # one stale compare: nothing is written
            assert st.cas_many([("/labnet/m/a", "2", ra), ("/labnet/m/new", "n", 0), ("/labnet/m/p/x", "x2", 1)]) \
                is False
            assert st.get("/labnet/m/new") is None and st.get("/labnet/m/a").value == b"1"  # type: ignore[union-attr]
            # all compares hold: all written, at one revision
            assert st.cas_many([("/labnet/m/a", "2", ra), ("/labnet/m/new", "n", 0)]) is True
            a2, new = st.get("/labnet/m/a"), st.get("/labnet/m/new")
            assert a2 is not None and new is not None and a2.value == b"2" and new.value == b"n"
            assert a2.mod_revision == new.mod_revision, (a2, new)
            assert st.cas_many([("/labnet/m/new", "again", 0)]) is False  # exists now
            st.delete_prefix("/labnet/m/")

    call_in_netns(s.ns.netns, body)


def test_cas_race_has_exactly_one_winner(etcd1: tuple[Single, int]) -> None:
    s, _ = etcd1
    key = "/labnet/t/race"
    rounds = 15
    results: dict[str, list[object]] = {"w0": [], "w1": []}
    barrier = threading.Barrier(2, timeout=30)

    def writer(name: str) -> None:
        with EtcdStore(s.config) as st:
            for i in range(rounds):
                barrier.wait()
                if name == "w0":
                    st.put(key, f"round {i}")  # reset the key; both read it after the next barrier
                barrier.wait()
                kv = st.get(key)
                assert kv is not None
                barrier.wait()  # both hold the same mod_revision now
                try:
                    st.cas_or_raise(key, f"{name} won round {i}", kv.mod_revision)
                    results[name].append(True)
                except Conflict as exc:
                    results[name].append(exc)

    threads = [thread_in_netns(s.ns.netns, lambda n=n: writer(n), name=n) for n in results]  # type: ignore[misc]
    for t in threads:
        t.join(60)
    assert all(len(r) == rounds for r in results.values()), f"a writer died: {results}"
    for i in range(rounds):
        outcome = [results["w0"][i], results["w1"][i]]
        wins = [o for o in outcome if o is True]
        assert len(wins) == 1, f"round {i}: expected exactly one winner, got {outcome}"
        loser = next(o for o in outcome if o is not True)
        assert isinstance(loser, Conflict) and key in str(loser)


def test_watch_resumes_after_etcd_restart(netns_factory, etcd1: tuple[Single, int]) -> None:  # type: ignore[no-untyped-def]
    s, pid = etcd1

    def body() -> None:
        with EtcdStore(s.config) as st:
            st.put("/labnet/w/before", "1")
            events = st.watch("/labnet/w/")
            st.put("/labnet/w/one", "1")
            first = next(events)
            assert (first.type, first.kv.key) == ("put", "/labnet/w/one")

            os.kill(pid, signal.SIGKILL)
            poll(lambda: not pid_alive(pid), timeout=10, what=f"etcd pid {pid} to die")
            os.waitpid(pid, 0)
            s.start(netns_factory.track_pid)

            # Written while the watch is disconnected: it must come after the reconnect,
            # resumed from the revision after the last event seen.
            with EtcdStore(s.config) as other:
                other.put("/labnet/w/two", "2")
                other.delete("/labnet/w/one")
            got: list[Event] = [next(events), next(events)]
            assert [(e.type, e.kv.key) for e in got] == [("put", "/labnet/w/two"), ("delete", "/labnet/w/one")]
            assert got[0].kv.mod_revision > first.kv.mod_revision
            before = st.get("/labnet/w/before")
            assert before is not None and before.value == b"1", "data did not survive the restart"

    call_in_netns(s.ns.netns, body)


def test_unreachable_etcd_raises_datastore_unavailable(etcd1: tuple[Single, int]) -> None:
    s, _ = etcd1
    cfg = EtcdConfig(endpoints=(f"https://{ADDR}:2399",), ca_file=s.config.ca_file,
                     cert_file=s.config.cert_file, key_file=s.config.key_file, timeout=2)

    def body() -> None:
        st = EtcdStore(cfg)
        with pytest.raises(DatastoreUnavailable, match=f"{ADDR}:2399"):
            st.put("/labnet/x", "1")
        with pytest.raises(DatastoreUnavailable):
            st.watch("/labnet/")

    call_in_netns(s.ns.netns, body)


def test_stop_and_remove_data_leaves_no_process(etcd1: tuple[Single, int]) -> None:
    s, pid = etcd1
    assert pid_alive(pid)
    assert Path(f"/proc/{pid}/exe").resolve() == Path(server.ETCD_BIN).resolve()
    server.stop(pid)
    assert not pid_alive(pid) and not Path(f"/proc/{pid}").exists(), f"etcd pid {pid} still there after stop"
    server.remove_data(s.data)
    assert not s.data.exists()
    refused = curl(s.ns, s.pki, "--cert", str(s.pki.admin.cert), "--key", str(s.pki.admin.key))
    assert refused.returncode != 0, "something still answers on :2379 after stop"


def test_failed_member_stops_the_started_ones(netns_factory, pki: Pki, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    ns = netns_factory("half")
    run(ns, ["ip", "addr", "add", f"{ADDR}/32", "dev", "lo"])
    # etcd-2's address does not exist in its namespace: it cannot bind and exits.
    cluster = [EtcdMember("etcd-1", ADDR), EtcdMember("etcd-2", "10.99.0.2")]
    with pytest.raises(EtcdStartError) as err:
        server.start_cluster({"etcd-1": ns, "etcd-2": ns}, cluster, pki,
                             {m.name: tmp_path / m.name for m in cluster},
                             {m.name: tmp_path / f"{m.name}.log" for m in cluster}, timeout=30)
    for pid in err.value.pids.values():
        netns_factory.track_pid(pid)
    assert set(err.value.pids) == {"etcd-1", "etcd-2"}
    assert "died while starting" in str(err.value) and "10.99.0.2" in str(err.value)
    for name, pid in err.value.pids.items():
        assert not pid_alive(pid), f"etcd member {name} (pid {pid}) left running after a failed start"



def test_store_with_netns_in_config_works_from_the_host(etcd1: tuple[Single, int]) -> None:
    """extra["netns"]: connections open inside the node's netns; this thread stays in the root one."""
    s, _ = etcd1
    cfg = EtcdConfig(endpoints=s.config.endpoints, ca_file=s.config.ca_file, cert_file=s.config.cert_file,
                     key_file=s.config.key_file, extra={"netns": s.ns.netns})
    root_ns = os.readlink("/proc/thread-self/ns/net")
    with EtcdStore(cfg) as st:
        events = st.watch("/labnet/h/")
        st.put("/labnet/h/k", "v")
        ev = next(events)
        assert (ev.type, ev.kv.key, ev.kv.value) == ("put", "/labnet/h/k", b"v")
        assert st.health() == {s.config.endpoints[0]: (True, '{"health": "true"}')}
    assert os.readlink("/proc/thread-self/ns/net") == root_ns

    # close() ends a watch that another thread is blocked in
    st = EtcdStore(cfg)
    seen: list[Event] = []
    reader = threading.Thread(target=lambda: seen.extend(st.watch("/labnet/none/")), daemon=True)
    reader.start()
    poll(lambda: st._streams, timeout=10, what="the watch stream to open")
    st.close()
    reader.join(10)
    assert not reader.is_alive(), "watch still blocked after close()"
    assert seen == []
    with pytest.raises(ValueError, match="does not exist"):
        EtcdStore(EtcdConfig(endpoints=("http://x:1",), extra={"netns": "/run/netns/lnet-test-none"}))


# -- etcd as `labnet up` builds it: three members, plain HTTP, a missing binary -------------------
FIXTURES = REPO / "fixtures" / "topologies" / "good"


def _etcd_pids(lab: str) -> dict[str, int]:
    rows = json.loads(labnet("status", "-l", lab, "--json").stdout)
    return {p["node"]: p["pid"] for p in rows[0]["processes"] if p["what"] == "etcd"}


def _etcd_processes(members: dict[str, str]) -> list[str]:
    """etcd processes of these members (name -> client URL), found by scanning /proc/*/cmdline:
    inside its node every lab's etcd has the same --data-dir, so a member is known by its name and URL."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            argv = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for name, url in members.items():
            if f"--name={name}" in argv and f"--advertise-client-urls={url}" in argv:
                found.append(f"pid {d.name}: etcd member {name} ({' '.join(argv)[:160]})")
    return found


def _down_leaves_no_etcd(lab: str, before: object) -> None:
    """`labnet down`: no process in the lab's namespaces (etcd among them), its data dirs gone."""
    journal = labmod.load_journal(lab)
    assert journal is not None, f"lab {lab}: no journal before down"
    members = journal.info["etcd"]["members"]
    data_dirs = [paths.node_dir(lab, m) for m in members]
    host_data = [get_runtime(journal.runtime)(lab, journal).host_path(m, ETCD_DATA_INSIDE) for m in members]
    for m in members:  # on a tmpfs in the node's mount namespace: it goes with the node
        seen = labnet("exec", "-l", lab, m, "--", "sh", "-c",
                      f"test -d {ETCD_DATA_INSIDE}/member && grep ' {ETCD_DATA_INSIDE} ' /proc/self/mountinfo",
                      check=False)
        assert seen.returncode == 0 and " - tmpfs " in seen.stdout, (
            f"lab {lab}: etcd member {m}: expected its data in {ETCD_DATA_INSIDE}/member on a tmpfs, got "
            f"exit {seen.returncode}: {seen.stdout.strip()} {seen.stderr.strip()}")
    urls = dict(zip(members, journal.info["etcd"]["endpoints"], strict=True))
    pids = lab_pids(lab)
    running = _etcd_processes(urls)
    assert running, f"lab {lab}: the /proc scan finds no etcd member of {urls} while the lab is up"
    labnet("down", "--name", lab)
    left = _etcd_processes(urls)
    assert not left, f"lab {lab}: etcd processes left after down: {left}"
    for m, d in zip(members, host_data, strict=True):
        assert not d.exists(), f"lab {lab}: etcd member {m}'s data dir {d} still there after down"
    assert not any(d.exists() for d in data_dirs), f"lab {lab}: node dirs left: {data_dirs}"
    leftovers = snapshot(lab, pids).leftovers(before)  # type: ignore[arg-type]
    assert not leftovers, f"lab {lab} left things behind after down: {leftovers}"


def test_three_member_etcd_from_labnet_up_survives_a_killed_member() -> None:
    """`etcd: {nodes: [a, b, c]}` brought up by `labnet up`; one member killed by its
    recorded pid; writes still work; `down` leaves no etcd process and no data."""
    lab = "t-etcd3"
    before = snapshot(lab)
    labnet("up", str(FIXTURES / "etcd-three.yaml"), "--name", lab, "-q")
    try:
        members = ["e3-a", "e3-b", "e3-c"]
        pids = _etcd_pids(lab)
        assert sorted(pids) == members, f"lab {lab}: etcd processes by node: expected {members}, got {pids}"
        health = json.loads(labnet("etcd", "-l", lab, "health", "--json").stdout)
        want = {f"https://10.77.3.{i}:2379" for i in (11, 12, 13)}
        assert set(health) == want, f"lab {lab}: etcd endpoints: expected {sorted(want)}, got {sorted(health)}"
        sick = {ep: h for ep, h in health.items() if not h["healthy"]}
        assert not sick, f"lab {lab}: unhealthy etcd members right after up: {sick}"
        info = labmod.load_journal(lab).info  # type: ignore[union-attr]
        with_store(info, lambda st: st.put("/labnet/t/before-kill", "1"))

        victim = pids["e3-a"]  # the member the CLI connects through: the client must move on
        os.kill(victim, signal.SIGKILL)
        poll(lambda: pid_alive(victim), lambda alive: not alive, timeout=10,
             what=f"lab {lab}: etcd on e3-a (pid {victim}) to die")
        poll(lambda: with_store(info, lambda st: st.put("/labnet/t/after-kill", "2")), timeout=20,
             what=f"lab {lab}: a write to the 2-of-3 etcd cluster after e3-a's member was killed")
        got = labnet("etcd", "-l", lab, "get", "/labnet/t/after-kill").stdout.strip()
        assert got == "2", f"lab {lab}: /labnet/t/after-kill: expected '2', got {got!r}"
        got = labnet("etcd", "-l", lab, "get", "/labnet/t/before-kill").stdout.strip()
        assert got == "1", f"lab {lab}: /labnet/t/before-kill lost after the kill: got {got!r}"
        res = labnet("etcd", "-l", lab, "health", "--json", check=False)
        assert res.returncode == 1, f"lab {lab}: `etcd health` with a member down: expected exit 1, got {res}"
        health = json.loads(res.stdout)
        state = {ep: h["healthy"] for ep, h in health.items()}
        assert state == {"https://10.77.3.11:2379": False, "https://10.77.3.12:2379": True,
                         "https://10.77.3.13:2379": True}, f"lab {lab}: health after killing e3-a: {health}"
        _down_leaves_no_etcd(lab, before)
    finally:
        labnet("down", "--name", lab, check=False)


def test_plain_http_etcd_from_labnet_up() -> None:
    """`tls: false` gives a plain-HTTP etcd that any node can curl; `down` removes it."""
    lab = "t-etcdplain"
    before = snapshot(lab)
    labnet("up", str(FIXTURES / "etcd-plain.yaml"), "--name", lab, "-q")
    try:
        info = labmod.load_journal(lab).info  # type: ignore[union-attr]
        assert info["etcd"]["endpoints"] == ["http://10.77.4.11:2379"] and info["etcd"]["tls"] is False, \
            f"lab {lab}: etcd in the journal: expected plain http://10.77.4.11:2379, got {info['etcd']}"
        res = lab_exec(lab, "ep-b", "curl", "-sS", "--noproxy", "*", "--max-time", "5",
                       "http://10.77.4.11:2379/health", check=False)
        assert res.returncode == 0 and '"health":"true"' in res.stdout.replace(" ", ""), \
            f"lab {lab}: node ep-b: curl http://10.77.4.11:2379/health: exit {res.returncode}, {res.stdout}{res.stderr}"
        tls = lab_exec(lab, "ep-b", "curl", "-sSk", "--noproxy", "*", "--max-time", "5",
                       "https://10.77.4.11:2379/health", check=False)
        assert tls.returncode != 0, f"lab {lab}: tls: false, yet etcd answered HTTPS: {tls.stdout}"
        # The agents and the CNI config use plain http as well: the agents came up on it.
        keys = labnet("etcd", "-l", lab, "ls", "/labnet/", "--json").stdout
        assert "ep-b" in keys, f"lab {lab}: node ep-b did not register in the plain-HTTP etcd: {keys[:500]}"
        _down_leaves_no_etcd(lab, before)
    finally:
        labnet("down", "--name", lab, check=False)


def test_missing_etcd_binary_fails_up_and_rolls_back() -> None:
    """Without the etcd binary, `up` says what to install and leaves nothing behind."""
    lab = "t-noetcd"
    before = snapshot(lab)
    missing = "/nonexistent/labnet-test/etcd"
    proc = subprocess.run([sys.executable, "-m", "labnet.cli", "up", str(FIXTURES / "etcd-plain.yaml"),
                           "--name", lab, "-q"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LABNET_ETCD_BIN": missing})
    try:
        assert proc.returncode == 1, f"lab {lab}: up without etcd: expected exit 1, got {proc.returncode}: {proc.stderr}"
        assert f"etcd binary {missing} not found" in proc.stderr \
            and "apt-get install etcd-server" in proc.stderr, f"lab {lab}: up's error: {proc.stderr!r}"
        left = snapshot(lab).leftovers(before)
        assert not left, f"lab {lab}: a failed up (no etcd binary) left: {left}"
        status = json.loads(labnet("status", "-l", lab, "--json").stdout)
        assert status == [], f"lab {lab}: status after a failed up: {status}"
    finally:
        labnet("down", "--name", lab, check=False)
