"""Drawing: the same PNG bytes in this process and in the drawing processes, batches, failures."""

from __future__ import annotations

import numpy as np
import pytest

from medtl.evaluation.drawing import Drawing, DrawingError, draw_all
from medtl.evaluation.figures import BoxFigure, CdFigure, ReliabilityFigure, ReliabilityPanel
from medtl.evaluation.plots import draw

PNG = b"\x89PNG\r\n\x1a\n"


def _boxes(n: int, prefix: str = "box") -> list[BoxFigure]:
    rng = np.random.default_rng(3)
    return [BoxFigure(f"{prefix}{i}.png", f"cell {i}", (("test_f1", (("random", rng.random(5)), ("domain", rng.random(4)))),))
            for i in range(n)]


def _reliability() -> ReliabilityFigure:
    bins = np.array([0.1, 0.5, 0.9])
    known = ReliabilityPanel("random", "random (run 12345678)", bins, bins + 0.05, bins - 0.1, bins + 0.1, np.array([4, 4, 4]))
    empty = np.empty(0)
    unknown = ReliabilityPanel("domain", "domain", empty, empty, empty, empty, empty, note="calibration unknown: no predictions")
    return ReliabilityFigure("reliability.png", "demo-binary", "resnet18", "reliability", "p(positive)", "observed",
                             (known, unknown))


def test_drawing_processes_give_the_bytes_drawn_here():
    first, second = _boxes(3), [_reliability(), CdFigure("cd.png", ("a", "b", "c"), (1.2, 2.0, 2.8), 5, 1.48, ((1.2, 2.0),))]
    here = {f.name: draw(f) for f in (*first, *second)}
    assert all(png.startswith(PNG) for png in here.values())
    with Drawing(2) as drawing:
        drawing.submit(first)
        drawing.submit(second)  # a later batch, drawn by the same warm workers
        drawing.submit(first)  # already submitted: nothing sent again
        assert drawing.result([*first, *second]) == here
    with Drawing(0) as inline:
        assert inline.result(first) == {f.name: here[f.name] for f in first}
    assert draw_all(first) == {f.name: here[f.name] for f in first}


def test_a_failing_figure_is_one_error_and_the_process_ends():
    broken = BoxFigure("broken.png", "broken", (("m", (("a", "not numbers"),)),))
    with Drawing(1) as drawing:
        drawing.submit([broken])
        with pytest.raises(DrawingError, match="drawing the figures failed: ValueError"):
            drawing.result([broken])
        process = drawing._process
    assert not process.is_alive()


def test_closing_before_collecting_stops_the_process_and_its_workers():
    import os
    import time

    drawing = Drawing(2)
    drawing.submit(_boxes(40))
    process = drawing._process
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_children(process.pid)) < 2:  # the workers are drawing
        time.sleep(0.05)
    workers = _children(process.pid)
    assert len(workers) == 2
    drawing.close()
    assert not process.is_alive()
    time.sleep(0.5)
    assert [w for w in workers if os.path.exists(f"/proc/{w}") and _state(w) != "Z"] == []


def _children(pid: int) -> list[int]:
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _state(pid: int) -> str:
    from pathlib import Path

    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
