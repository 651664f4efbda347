"""Ingest's isolated decoding processes: a file that crashes or hangs its worker is skipped, not fatal.

Files are decoded and scanned for burned-in text in worker processes, never in the process that
supervises the run, each with a time limit (and, in `convert`, a pixel-count limit checked before
decoding). A file that crashes its worker (a decoder or OCR fault, the kernel's OOM killer) or runs
past the limit is recorded as skipped, with whether the decoder or the text scan was running, and
the worker replaced. Before a file is handed out an in-progress marker (`DIR/.inprogress/`,
holding how many runs it was in flight in) is written and removed once its record exists. When the
whole run dies (the machine's OOM killer taking the supervisor, a power cut), the rerun tries the
files in flight once more, and skips a file that was in flight when `RUN_DEATHS` runs died instead
of dying on it again.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medtl.errors import UserError
from medtl.training.archive import convert
from medtl.training.archive.deid import keyed, path_key
from medtl.training.archive.shards import read_shard, shard_path, write_shard

IN_PROGRESS = ".inprogress"
DECODE_TIMEOUT_S = 300.0
START_TIMEOUT_S = 120.0  # a worker loads the OCR models before it takes a file
ORPHAN_CHECK_S = 2.0  # how often an idle worker checks that its supervisor is alive
# A file in flight when this many runs died (markers left behind) is skipped: an innocent file is
# finished early in the rerun (files before it are already done), a culprit kills the rerun again.
RUN_DEATHS = 2

log = logging.getLogger(__name__)


def _serve(
    conn: multiprocessing.connection.Connection, supervisor_end: multiprocessing.connection.Connection,
    supervisor_pid: int, init: tuple, stage: Any,
) -> None:
    """A decoding worker: converts the files it is sent until it is sent None, or its supervisor is gone.

    A forked worker inherits the supervisor's end of its own pipe: it is closed first, so a supervisor
    that dies (SIGKILL, the OOM killer) leaves the worker an end of file instead of a wait for ever;
    the parent check covers ends held by sibling workers forked later.
    """
    import signal

    supervisor_end.close()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when workers stop
    convert.init_worker(*init, stage=stage)
    with contextlib.suppress(EOFError, BrokenPipeError, ConnectionResetError):  # the supervisor is gone
        try:
            convert.warm_up()  # the OCR models load before the first file's clock starts
        except Exception as exc:
            conn.send(("failed", type(exc).__name__))
            return
        conn.send(("ready", ""))
        while True:
            while not conn.poll(ORPHAN_CHECK_S):
                if os.getppid() != supervisor_pid:
                    return
            task = conn.recv()
            if task is None:
                return
            conn.send(convert.process_source(*task))


class _Worker:
    """One decoding process and the file it is working on."""

    def __init__(self, ctx: Any, init: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.stage = ctx.Value("i", convert.STAGE_DECODING, lock=False)  # set by the worker: decoding or scanning
        self.proc = ctx.Process(target=_serve, args=(child, self.conn, os.getpid(), init, self.stage), daemon=True)
        self.proc.start()
        child.close()
        self.task: tuple[str, str, str] | None = None  # (path, rel, path key)
        self.started = 0.0

    def wait_ready(self) -> _Worker:
        """Wait until the worker has loaded the OCR engine (workers started together load it side by side)."""
        state, detail = self.conn.recv() if self.conn.poll(START_TIMEOUT_S) else ("silent", "")
        if state != "ready":
            self.kill()
            raise UserError(f"an ingest worker could not load the OCR engine ({detail or f'no answer in {START_TIMEOUT_S:g} s'}); "
                            "reinstall rapidocr and onnxruntime, or pass --burned-in off")
        return self

    def give(self, path: str, rel: str, pkey: str) -> None:
        self.task, self.started = (path, rel, pkey), time.monotonic()
        self.stage.value = convert.STAGE_DECODING
        self.conn.send((path, rel))

    def doing(self) -> str:
        """What the worker was doing, as a reason names it: the decoder or the text scan."""
        return "text scan" if self.stage.value == convert.STAGE_SCANNING else "decoder"

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        self.proc.join(2)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(2)
        self.conn.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


def _context() -> Any:
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _crash_reason(exitcode: int | None, doing: str = "decoder") -> str:
    """A skip reason for a worker that died: SIGKILL is, in practice, the kernel's OOM killer."""
    if exitcode == -9:
        return f"{doing} crashed (worker exit code -9: killed, most likely out of memory)"
    return f"{doing} crashed (worker exit code {exitcode})"


def _attempts(marker: Path) -> int:
    try:
        return int(marker.read_text() or 1)
    except (OSError, ValueError):
        return 1


def _record_failure(out: Path, key: bytes, rel: str, reason: str) -> None:
    pkey = path_key(key, rel)
    write_shard(shard_path(out, keyed(key, "crashed", rel)), {
        "path_keys": [pkey], "rows": [], "skipped": [{"source_key": pkey, "reason": reason}], "refused": None})


def isolated_results(
    sources: Iterator[tuple[Path, str]], workers: int, init: tuple, timeout: float, seen_keys: dict[str, str]
) -> Iterator[dict[str, Any]]:
    """Results in completion order from `workers` isolated decoding processes, one file each at a time.

    `init` is `convert.init_worker`'s arguments. A worker that dies or runs past `timeout` seconds
    on a file is replaced and the file recorded as skipped. `seen_keys` collects path key ->
    relative path of every source (for the source map).
    """
    out, key, retry = Path(init[0]), init[1], init[3]
    markers = out / IN_PROGRESS
    markers.mkdir(exist_ok=True)
    stale = {m.name: _attempts(m) for m in markers.iterdir()}
    ctx = _context()
    idle: list[_Worker] = []
    busy: list[_Worker] = []
    sources = iter(sources)
    exhausted = False
    try:
        idle += [_Worker(ctx, init) for _ in range(workers)]  # started together: the models load in parallel
        for worker in idle:
            worker.wait_ready()
        while True:
            while idle and not exhausted:
                item = next(sources, None)
                if item is None:
                    exhausted = True
                    break
                path, rel = item
                pkey = path_key(key, rel)
                seen_keys[pkey] = rel
                crashed = shard_path(out, keyed(key, "crashed", rel))
                attempts = stale.pop(pkey, 0)
                if attempts >= RUN_DEATHS and not retry:
                    _record_failure(out, key, rel, f"decoder did not finish in {attempts} earlier runs (the file "
                                    "crashed or hung the whole run); --retry-skipped tries it again")
                    (markers / pkey).unlink(missing_ok=True)
                    yield {"status": "skipped", "decoder_failure": True}
                    continue
                if crashed.exists():
                    if not retry and read_shard(crashed) is not None:
                        yield {"status": "done"}
                        continue
                    crashed.unlink(missing_ok=True)
                (markers / pkey).write_text(str(attempts + 1))
                worker = idle.pop()
                worker.give(str(path), rel, pkey)
                busy.append(worker)
            if not busy:
                break
            now = time.monotonic()
            wait_s = max(0.01, min(w.started + timeout - now for w in busy))
            ready = set(multiprocessing.connection.wait(
                [w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=wait_s))
            for worker in list(busy):
                assert worker.task is not None
                _, rel, pkey = worker.task
                reason = None
                if worker.conn in ready:
                    try:
                        result = worker.conn.recv()
                    except (EOFError, OSError):
                        worker.proc.join(1)
                        reason = _crash_reason(worker.proc.exitcode, worker.doing())
                    else:
                        busy.remove(worker)
                        idle.append(worker)
                        (markers / pkey).unlink(missing_ok=True)
                        yield result
                        continue
                elif worker.proc.sentinel in ready or not worker.proc.is_alive():
                    worker.proc.join(1)
                    reason = _crash_reason(worker.proc.exitcode, worker.doing())
                elif time.monotonic() - worker.started > timeout:
                    reason = f"{worker.doing()} timed out after {timeout:g} s"
                if reason is None:
                    continue
                worker.kill()
                busy.remove(worker)
                idle.append(_Worker(ctx, init).wait_ready())
                _record_failure(out, key, rel, reason)
                (markers / pkey).unlink(missing_ok=True)
                log.warning("ingest: source %s skipped: %s", pkey, reason)
                yield {"status": "skipped", "decoder_failure": True}
    finally:
        for worker in busy:
            worker.kill()
            if worker.task is not None:  # interrupted, not the file's fault: no marker survives
                (markers / worker.task[2]).unlink(missing_ok=True)
        for worker in idle:
            worker.stop()
    for name in stale:  # markers of sources no longer under SRC
        (markers / name).unlink(missing_ok=True)
