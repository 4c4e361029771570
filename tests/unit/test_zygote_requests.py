"""The zygote answers a bad request with an error and goes on; a daemon's exit status is the
interpreter's."""

from __future__ import annotations

import pytest

from labnet.agent.main import exit_status
from labnet.lab.zygote import check as _check

GOOD = {"module": "labnet.agent.main", "args": ["supervise"], "log": "/var/log/x.log",
        "netns": "/run/netns/lnet-a.n1", "mntns": None, "utsns": None, "env": None}


@pytest.mark.parametrize(("req", "match"), [
    ([], "expected a JSON object"),
    ("labnet.agent.main", "expected a JSON object"),
    ({**GOOD, "module": "os"}, "not one the zygote serves"),
    ({**GOOD, "args": "supervise; rm -rf /"}, "args must be a list of strings"),
    ({**GOOD, "args": [1]}, "args must be a list of strings"),
    ({**GOOD, "log": "relative.log"}, "log must be an absolute path"),
    ({k: v for k, v in GOOD.items() if k != "log"}, "log must be an absolute path"),
    ({**GOOD, "netns": 5}, "netns must be a path or null"),
    ({**GOOD, "env": {"A": 1}}, "env must be an object of strings"),
])
def test_bad_requests_are_refused_by_name(req: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _check(req)
    _check(GOOD)


def test_exit_status_is_what_the_interpreter_would_return(capsys: pytest.CaptureFixture[str]) -> None:
    assert [exit_status(SystemExit(c)) for c in (None, 0, 3)] == [0, 0, 3]
    assert exit_status(SystemExit("labnet CNI server: another server already answers")) == 1
    assert "another server already answers" in capsys.readouterr().err
