from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from labnet.errors import WaitTimeout
from labnet.lab.journal import Journal
from labnet.wait import poll


def test_poll_returns_first_ok_value() -> None:
    counter = itertools.count()
    assert poll(lambda: next(counter), lambda n: n >= 3, timeout=5, what="the counter", interval=0.001) == 3


def test_poll_timeout_names_what_and_last_state() -> None:
    with pytest.raises(WaitTimeout) as info:
        poll(lambda: {"state": "Active"}, lambda s: s["state"] == "Established", timeout=0.05,
             what="BGP session ubuntu-3 -> 192.168.50.74")
    msg = str(info.value)
    assert "BGP session ubuntu-3 -> 192.168.50.74" in msg
    assert "'Active'" in msg and "timed out after" in msg
    assert info.value.waited >= 0.05


def test_poll_keeps_the_last_exception_as_state() -> None:
    def probe() -> None:
        raise ConnectionRefusedError("etcd 10.20.30.71:2379 refused")

    with pytest.raises(WaitTimeout, match="ConnectionRefusedError: etcd 10.20.30.71:2379 refused"):
        poll(probe, timeout=0.03, what="etcd health")


def test_journal_records_before_and_reloads(tmp_path) -> None:
    j = Journal(path=tmp_path / "journal.json", lab="x")
    j.claim()
    e = j.record("netns", name="lnet-x.a")
    j.update(e, done=True)
    again = Journal.load(tmp_path / "journal.json")
    assert again.entries == [{"kind": "netns", "name": "lnet-x.a", "done": True}]
    assert again.owner_alive()
    again.owner_pid = 2**22 + 12345  # no such pid
    assert not again.owner_alive()


def test_the_journal_takes_records_from_many_threads(tmp_path: Path) -> None:
    """The pods phase adds pods from several threads: every record lands, the file stays JSON."""
    import threading

    j = Journal(path=tmp_path / "journal.json", lab="t")
    j.save()

    def work(t: int) -> None:
        for i in range(40):
            with j.lock:
                j.info.setdefault("pods", {})[f"p{t}-{i}"] = {"node": f"n{t}"}
                j.save()
            j.record("netns", name=f"x{t}-{i}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    back = Journal.load(j.path)
    assert len(back.entries) == 320 and len(back.info["pods"]) == 320


def test_records_go_to_the_tail_and_a_reader_sees_them_without_a_save(tmp_path: Path) -> None:
    from labnet.lab.journal import tail_path

    j = Journal(path=tmp_path / "journal.json", lab="t")
    j.claim()
    size = j.path.stat().st_size
    a = j.record("netns", name="lnet-t.a")
    j.record("veth", name="v1")
    j.update(a, pid=7)
    j.set_info(("pods", "p1"), {"node": "n1"})
    j.set_info(("pods", "p2"), {"node": "n2"})
    j.set_info(("pods", "p2"), remove=True)
    assert j.path.stat().st_size == size, "a record must not rewrite the whole journal"
    back = Journal.load(j.path)  # another process, mid-build
    assert back.entries == [{"kind": "netns", "name": "lnet-t.a", "pid": 7}, {"kind": "veth", "name": "v1"}]
    assert back.info == {"pods": {"p1": {"node": "n1"}}}
    j.save()  # folds the tail into the file
    assert not tail_path(j.path).exists() and Journal.load(j.path).entries == back.entries


def test_a_tail_cut_by_a_crash_and_a_tail_already_saved_replay_safely(tmp_path: Path) -> None:
    from labnet.lab.journal import tail_path

    j = Journal(path=tmp_path / "journal.json", lab="t")
    j.claim()
    j.record("netns", name="a")
    j.record("netns", name="b")
    lines = tail_path(j.path).read_text()
    j.save()  # a crash right after the file was written, before the tail went: both hold a and b
    tail_path(j.path).write_text(lines + '{"op": "entry", "i": 2, "entry": {"kind": "netns", "na')
    back = Journal.load(j.path)
    assert [e["name"] for e in back.entries] == ["a", "b"], back.entries


def test_a_fold_keeps_the_record_that_caused_it_and_a_torn_line_keeps_what_follows(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from labnet.lab.journal import tail_path

    monkeypatch.setattr(Journal, "TAIL_MAX", 3)
    j = Journal(path=tmp_path / "journal.json", lab="t")
    j.claim()
    for i in range(7):
        j.record("netns", name=f"n{i}")
    assert [e["name"] for e in Journal.load(j.path).entries] == [f"n{i}" for i in range(7)]
    # a crash cut the last line short; the next writer's lines must still count
    with open(tail_path(j.path), "ab") as f:
        f.write(b'{"op": "entry", "i": 7, "entry": {"kind": "net')
    again = Journal.load(j.path)
    again.record("netns", name="after-1")
    again.record("netns", name="after-2")
    assert [e["name"] for e in Journal.load(j.path).entries][-3:] == ["n6", "after-1", "after-2"]


def test_a_tail_left_from_before_the_last_save_is_not_replayed_over_it(tmp_path: Path) -> None:
    from labnet.lab.journal import tail_path

    j = Journal(path=tmp_path / "journal.json", lab="t")
    j.claim()
    j.set_info(("pods", "p1"), {"node": "n1"})
    old_tail = tail_path(j.path).read_bytes()
    j.info["pods"].pop("p1")  # `labnet pod del` edits info and saves the whole journal
    j.save()
    tail_path(j.path).write_bytes(old_tail)  # a crash between the file's replace and the tail's removal
    assert Journal.load(j.path).info.get("pods") == {}, "a removed pod came back from an old tail"
