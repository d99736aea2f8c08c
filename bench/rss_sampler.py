"""Peak resident memory over a phase of a process, by sampling.

``ru_maxrss`` is the peak over the process's whole life: imports, model loading and evaluation
included, so it cannot tell the training phase apart (every system came out 1.00x on
2026-12-04). This samples the resident set size (``/proc/self/statm``, field 2 x page size) from a
background thread every ``interval_s`` between ``start()`` and ``stop()``; the peak it reports
includes what was resident when the phase began (models, data), and nothing is subtracted.
The same sampler runs in every system's worker. Sampling can miss a spike shorter than the
interval; at 5 ms against steps of tens of milliseconds and more, the error is small.
"""
from __future__ import annotations

import os
import threading
import time

METHOD = "peak of process RSS (/proc/self/statm) sampled every 5 ms from the first training step to the last; nothing subtracted"
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """The process's resident set size now."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class RssSampler:
    """``start()`` ... ``stop()``: then ``.peak`` and ``.at_start`` in bytes, ``.samples`` taken."""

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.peak = self.at_start = self.samples = 0
        self._stop = threading.Event()
        self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self.samples += 1
            self._stop.wait(self.interval_s)

    def start(self) -> "RssSampler":
        self.at_start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        return self.peak
