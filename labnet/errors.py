"""Exceptions shared across labnet. Kept dependency-free (the CNI plugin imports it)."""

from __future__ import annotations


class LabnetError(Exception):
    """Base class. The CLI prints str(exc) and exits with `exit_code`."""

    exit_code = 1


class BadInput(LabnetError):
    """The user gave something labnet cannot use (exit status 2)."""

    exit_code = 2


class WaitTimeout(LabnetError):
    """A poll ran out of time. The message holds the last state seen and the time waited."""

    def __init__(self, what: str, waited: float, last: object) -> None:
        self.what = what
        self.waited = waited
        self.last = last
        super().__init__(f"timed out after {waited:.1f}s waiting for {what}; last state seen: {last}")


class CommandFailed(LabnetError):
    def __init__(self, where: str, argv: list[str], rc: int, stderr: str) -> None:
        self.where, self.argv, self.rc, self.stderr = where, argv, rc, stderr
        cmd = " ".join(argv)
        super().__init__(f"{where}: `{cmd}` exited {rc}: {stderr.strip()[-2000:]}")
