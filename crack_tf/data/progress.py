"""A dependency-free progress bar for the data tools and inspection commands (stderr).

On a terminal the bar is redrawn in place (~10 times a second at most); into a file or pipe
(a log) it writes a whole line every ``log_every`` seconds and at the end. Each shows done /
total, the rate and, while unfinished, the estimated time left (``ETA``) at the rate so far.
"""

from __future__ import annotations

import sys
import time


def eta_text(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class Progress:
    def __init__(self, total: int, label: str = "", stream=None, log_every: float = 10.0):
        self.total, self.label, self.done = max(total, 0), label, 0
        self.stream = stream or sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self.interval = 0.1 if self.interactive else log_every
        self._start = self._last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.interval or (self.interactive and self.done >= self.total):
            self._last = now
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The text of the bar now."""
        now = time.monotonic() if now is None else now
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(30 * min(frac, 1.0))
        rate = self.done / max(now - self._start, 1e-9)
        shown = f"{rate:.0f}/s" if rate >= 10 else f"{rate:.2f}/s"
        left = self.total - self.done
        eta = f", ETA {eta_text(left / rate)}" if 0 < left and self.done > 0 else ""
        return f"{self.label} [{bar:<30}] {self.done}/{self.total} ({shown}{eta})"

    def _draw(self, now: float) -> None:
        self.stream.write(("\r" if self.interactive else "") + self.line(now) + ("" if self.interactive else "\n"))
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.stream.write(("\r" if self.interactive else "") + self.line() + "\n")
        self.stream.flush()
