"""The one progress reporter every stage uses.

On a terminal (stderr is a tty) it draws one bar line, redrawn in place, with elapsed time and
ETA. Anywhere else (a log file, ``make run | tee``, a cluster pod) it writes plain log lines,
never a ``\\r``, and only now and then: when another ``every_pct`` percent is done (at most
one such line per ``MIN_GAP_S``), after ``every_s`` seconds, when the caller asks
(``say=True``), and once at the end.

    with Progress("evaluate pytorch", total=len(rows), unit="rows") as p:
        for batch in batches:
            ...
            p.update(len(batch))

``SLM_PROGRESS=plain`` forces the plain lines on a terminal too.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("slm")
MIN_GAP_S = 2.0  # a fast loop gets no line per percent step: the final line says it all


def clock(seconds: float) -> str:
    """``4.2s``, ``12:30``, ``1:02:03``."""
    if seconds < 59.95:
        return f"{max(seconds, 0):.1f}s"
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class Progress:
    """``what``: the line's lead (``train``, ``step``); ``total``: None when unknown (no ETA).
    ``quiet_s``: say nothing unless the work lasts longer than this (data_prep on small files)."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "",
        *,
        initial: int = 0,
        every_pct: float | None = 10,
        every_s: float = 10.0,
        quiet_s: float = 0.0,
        enabled: bool = True,
        stream=None,
    ):
        self.what, self.total, self.unit = what, total, unit
        self.done = self.initial = initial
        self.every_pct, self.every_s, self.quiet_s = every_pct, every_s, quiet_s
        self.enabled = enabled
        self.stream = stream or sys.stderr
        forced = os.environ.get("SLM_PROGRESS", "").lower() == "plain"
        self.tty = not forced and _isatty(self.stream)
        self.started = time.monotonic()
        self.last_line = self.last_draw = self.started
        self.last_bucket = self._bucket()
        self.note = ""
        self.lines = 0
        self.closed = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, *_exc) -> None:
        self.close(ok=exc_type is None)

    # ------------------------------------------------------------------ reporting

    def update(self, n: int = 1, note: str | None = None, say: bool | None = None) -> None:
        """``n`` more done. ``say``: True writes a plain line now, False never, None as throttled."""
        self.done += n
        if note is not None:
            self.note = note
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last_draw >= 0.1 or self.done == self.total:
                self._draw(now)
            return
        if say is None:
            gap = now - self.last_line
            say = (
                now - self.started >= self.quiet_s
                and self.done != self.total  # the end has its own line
                and (gap >= self.every_s or (gap >= MIN_GAP_S and self._bucket() > self.last_bucket))
            )
        if say:
            self._line(now)

    def close(self, ok: bool = True) -> None:
        """The last line: what was done, and how long it took (only if anything was shown, with ``quiet_s``)."""
        if self.closed or not self.enabled:
            return
        self.closed = True
        now = time.monotonic()
        if self.tty:
            if self.lines or now - self.started >= self.quiet_s:
                self._draw(now)
                self.stream.write("\n")
                self.stream.flush()
            return
        if ok and (self.lines or now - self.started >= self.quiet_s):
            log.info("%s", self.text(now, final=True))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def eta(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        done = self.done - self.initial
        if not self.total or done <= 0:
            return None
        return (self.total - self.done) * (now - self.started) / done

    def text(self, now: float | None = None, final: bool = False) -> str:
        """``step 10/60 loss 1.23 (17%, elapsed 0:12, ETA 1:00)``; at the end, ``... done in 1:12``."""
        now = time.monotonic() if now is None else now
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        head = " ".join(x for x in (self.what, count, self.unit, self.note) if x)
        if final:
            return f"{head} (done in {clock(now - self.started)})"
        parts = [f"{100 * self.done / self.total:.0f}%"] if self.total else []
        parts.append(f"elapsed {clock(now - self.started)}")
        eta = self.eta(now)
        if eta is not None:
            parts.append(f"ETA {clock(eta)}")
        return f"{head} ({', '.join(parts)})"

    # ------------------------------------------------------------------ output

    def _bucket(self) -> int:
        if not self.total or not self.every_pct:
            return 0
        return int(100 * self.done / self.total // self.every_pct)

    def _line(self, now: float) -> None:
        self.last_line, self.last_bucket = now, self._bucket()
        self.lines += 1
        log.info("%s", self.text(now))

    def _draw(self, now: float) -> None:
        if now - self.started < self.quiet_s:
            return
        self.last_draw = now
        self.lines += 1
        elapsed = clock(now - self.started)
        eta = self.eta(now)
        if self.total:
            width = 24
            filled = int(width * min(self.done / self.total, 1))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {self.unit}".rstrip()
            timing = f"{100 * self.done / self.total:3.0f}% {elapsed}" + (
                f" ETA {clock(eta)}" if eta is not None else ""
            )
        else:
            bar, timing = f"{self.done} {self.unit}".rstrip(), elapsed
        # \x1b[K clears what a longer earlier line left behind.
        self.stream.write(f"\r{self.what} {bar} {timing} {self.note}".rstrip() + "\x1b[K")
        self.stream.flush()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or file-less stream
        return False
