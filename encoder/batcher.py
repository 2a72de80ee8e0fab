"""`Batcher`: one model call for what concurrent callers bring together.

A service's threads each embed one image (a search, a verify, an identify). Calling the model
once per request left most of it idle: a compiled call costs nearly the same for one image as
for sixteen. Callers here queue their rows; one of them, the leader, runs the model on every
row waiting (up to `max_rows`) and hands each caller its own; whoever is still waiting then leads
the next call. Nobody waits for company: a lone caller leads at once, and rows only gather while
a call is already running.
"""
from __future__ import annotations

import threading
from typing import Callable, Optional, Sequence

import numpy as np


class _Slot:
    __slots__ = ("rows", "event", "lead", "result", "error")

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.event = threading.Event()
        self.lead = False
        self.result: Optional[tuple[np.ndarray, ...]] = None
        self.error: Optional[BaseException] = None


class Batcher:
    """`Batcher(call)(rows)` -> `call(rows)`, with concurrent callers' rows in one call.
    `call` maps an array (N, ...) to a tuple of arrays of N rows each."""

    def __init__(self, call: Callable[[np.ndarray], Sequence[np.ndarray]], max_rows: int = 64):
        self.call = call
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._waiting: list[_Slot] = []
        self._running = False
        self.calls = 0  # model calls made, and rows they took: batching, measured
        self.rows = 0

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        if len(rows) >= self.max_rows:  # a batch of its own already
            return tuple(self.call(rows))
        slot = _Slot(rows)
        with self._lock:
            self._waiting.append(slot)
            lead = not self._running
            self._running = True
        if not lead:
            slot.event.wait()
            if not slot.lead:
                return self._answer(slot)
        self._run()
        return self._answer(slot)

    def _run(self) -> None:
        """Lead one call: every waiting caller's rows, oldest first, up to `max_rows`; then hand
        the lead to the oldest caller still waiting, or stand down."""
        with self._lock:
            taken, n = [], 0
            while self._waiting and (not taken or n + len(self._waiting[0].rows) <= self.max_rows):
                slot = self._waiting.pop(0)
                taken.append(slot)
                n += len(slot.rows)
        try:
            outputs = self.call(np.concatenate([s.rows for s in taken]))
            start = 0
            for slot in taken:
                end = start + len(slot.rows)
                slot.result = tuple(o[start:end] for o in outputs)
                start = end
        except BaseException as exc:  # every caller in the call answers for it, none hangs
            for slot in taken:
                slot.error = exc
        with self._lock:
            self.calls += 1
            self.rows += n
            following = self._waiting[0] if self._waiting else None
            if following is None:
                self._running = False
            else:
                following.lead = True
        for slot in taken[1:]:
            slot.event.set()
        if following is not None:
            following.event.set()

    @staticmethod
    def _answer(slot: _Slot) -> tuple[np.ndarray, ...]:
        if slot.error is not None:
            raise slot.error
        return slot.result
