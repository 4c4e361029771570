"""Phase progress of `labnet up`: a rewritten line on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    def __init__(self, lab: str, stream: Any = None, quiet: bool = False) -> None:
        self.lab = lab
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.quiet = quiet

    def start(self, phase: str, detail: str = "") -> None:
        if self.quiet:
            return
        text = f"labnet: {self.lab}: {phase}{(' (' + detail + ')') if detail else ''} ..."
        if self.tty:
            self.stream.write("\r\033[K" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self, phase: str, seconds: float) -> None:
        if self.quiet:
            return
        text = f"labnet: {self.lab}: {phase} done in {seconds:.2f}s"
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
