"""Processes that draw a report's figures: started early so that loading matplotlib and drawing overlap the
analysis, warm when they draw (fonts and text layout loaded once, then forked)."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np

from medtl.evaluation.figures import BoxFigure, Figure
from medtl.evaluation.plots import draw


def default_workers() -> int:
    """Drawing processes worth starting here: half the CPUs, at least 2 and at most 4, when there are
    2+ CPUs and this is the main thread of a platform that can fork; else 0 (draw in this process)."""
    safe = threading.current_thread() is threading.main_thread() and "fork" in mp.get_all_start_methods()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, max(2, cpus // 2)) if safe and cpus >= 2 else 0


class DrawingError(RuntimeError):
    """The drawing process failed; the message carries its error."""


class Drawing:
    """Processes that draw a report's figures, started before the figures are known.

    The first process is forked at once and loads matplotlib (and draws a small figure, so fonts and
    text layout are warm) while the caller reads the store and computes the analysis; at the first
    batch of figures (`submit`) it forks its drawing workers from itself, already warm, and keeps them
    for later batches. With 0 workers everything is drawn in this process, at `result`. Use as a
    context manager.

    Args:
        workers: drawing processes (default `default_workers()`).
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        self._submitted: dict[str, Figure] = {}
        self._waiting = 0
        self._drawn: dict[str, bytes] = {}
        self._conn: Any = None
        self._process: Any = None
        if self.workers >= 1:
            context = mp.get_context("fork")
            self._conn, child = context.Pipe()
            # not a daemon: it forks the workers itself; `close` (or the pipe closing) ends it
            self._process = context.Process(target=_serve, args=(child, self.workers), name="medtl-drawing")
            self._process.start()
            with contextlib.suppress(ProcessLookupError, PermissionError):  # both sides set it: no race
                os.setpgid(self._process.pid, self._process.pid)
            child.close()

    def submit(self, figures: Sequence[Figure]) -> None:
        """Start drawing the figures not submitted before (a figure's name identifies it)."""
        batch = tuple(f for f in figures if f.name not in self._submitted)
        if not batch:
            return
        self._submitted.update((f.name, f) for f in batch)
        if self._conn is not None:
            self._conn.send(batch)
            self._waiting += 1

    def result(self, figures: Sequence[Figure]) -> dict[str, bytes]:
        """File name → PNG bytes of `figures` (submitting those not yet submitted).

        Raises:
            DrawingError: the drawing process failed or ended early.
        """
        figures = tuple(figures)
        self.submit(figures)
        if self._conn is None:
            self._drawn.update((f.name, draw(f)) for f in figures if f.name not in self._drawn)
        while self._waiting:
            try:
                status, payload = self._conn.recv()
            except EOFError:
                raise DrawingError("the drawing process ended without drawing the figures") from None
            self._waiting -= 1
            if status != "ok":
                raise DrawingError(f"drawing the figures failed: {payload}")
            self._drawn.update(payload)
        return {f.name: self._drawn[f.name] for f in figures}

    def close(self) -> None:
        """Stop the drawing process (at once when some of its figures were never collected)."""
        if self._process is None:
            return
        try:
            if self._waiting:
                _signal_group(self._process.pid, signal.SIGTERM)  # the process and the workers it forked
            else:
                self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=10)
        if self._process.is_alive():
            _signal_group(self._process.pid, signal.SIGKILL)
            self._process.join()
        self._conn.close()
        self._process = None

    def __enter__(self) -> Drawing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _warm() -> None:
    """Load matplotlib, its fonts and text layout by drawing a small figure (discarded)."""
    draw(BoxFigure("warm.png", "warm", (("m", (("a", np.array([1.0, 2.0])),)),)))


def _signal_group(pid: int, signum: int) -> None:
    """Send `signum` to the drawing process's group (it leads one: see `_serve`)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _serve(conn: Any, workers: int) -> None:
    """The drawing process: warm up, then draw each batch of figures it receives in `workers` forked
    copies of itself (forked at the first batch), until it receives None or the pipe closes.

    It leads its own process group, so that stopping it early stops its workers too, and leaves Ctrl-C
    to the parent, which stops it."""
    with contextlib.suppress(PermissionError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _warm()
    pool: ProcessPoolExecutor | None = None
    try:
        while True:
            try:
                jobs = conn.recv()
            except EOFError:
                return
            if jobs is None:
                return
            try:
                if workers > 1 and len(jobs) > 1:
                    pool = pool or ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"))
                    pngs = list(pool.map(draw, jobs))
                else:
                    pngs = [draw(job) for job in jobs]
                conn.send(("ok", {job.name: png for job, png in zip(jobs, pngs, strict=True)}))
            except Exception as exc:  # the parent raises it as a DrawingError
                conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        conn.close()


def draw_all(figures: Iterable[Figure], drawing: Drawing | None = None) -> dict[str, bytes]:
    """Draw the figures, file name → PNG bytes in their order.

    Args:
        figures: the specs (`Analysis.figures`).
        drawing: the drawing processes to use (they may already be drawing these figures); default:
            processes started here when there are 8+ figures and `default_workers()` allows, else
            this process.
    """
    jobs = tuple(figures)
    if drawing is not None:
        pngs = drawing.result(jobs)
    else:
        with for_figures(jobs) as own:
            pngs = own.result(jobs)
    return {job.name: pngs[job.name] for job in jobs}


def for_figures(figures: Sequence[Figure]) -> Drawing:
    """A Drawing sized for `figures`: processes for 8 or more (when `default_workers()` allows), else none."""
    return Drawing(default_workers() if len(figures) >= 8 else 0)
