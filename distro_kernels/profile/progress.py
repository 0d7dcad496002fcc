"""A progress bar on stderr (no dependency): redrawn in place on a terminal, one line per
step otherwise (logs, CI), silent when disabled."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, *, stream=None, enabled: bool = True, width: int = 28):
        self.total, self.done, self.width = max(int(total), 1), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()

    def bar(self, label: str) -> str:
        filled = self.width * self.done // self.total
        elapsed = time.monotonic() - self.start
        return (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"{elapsed:5.0f}s {label}")

    def show(self, label: str) -> None:
        """Shows what runs now (before it runs)."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.bar(label)[:160])
        else:
            self.stream.write(self.bar(label) + "\n")
        self.stream.flush()

    def detail(self, label: str) -> None:
        """Finer news (each run): on a terminal only, where it costs no lines."""
        if self.tty:
            self.show(label)

    def step(self, label: str = "") -> None:
        self.done = min(self.done + 1, self.total)
        if self.tty and label:
            self.show(label)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
