"""The evaluation path loads no torch: `medtl evaluate` and `medtl serve` import what they use.

Each check runs in a fresh interpreter (this test process may already hold torch) and lists the
heavy modules present in `sys.modules` after the real work is done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

from .conftest import STUDY

HEAVY = ("torch", "torchvision", "optuna")


def _loaded(code: str) -> dict[str, bool]:
    script = textwrap.dedent(code) + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{m: m in sys.modules for m in {HEAVY + ("mlflow",)!r}}}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_evaluate_without_logging_loads_neither_torch_nor_mlflow(synthetic_store, tmp_path):
    loaded = _loaded(f"""
        from medtl.mlops.cli import main
        rc = main(["evaluate", "--no-log", "--study", {STUDY!r}, "--tracking-uri", {synthetic_store.uri!r},
                   "--out", {str(tmp_path / "rep")!r}])
        assert rc == 0, rc
    """)
    assert (tmp_path / "rep" / "report.html").is_file()
    assert loaded == dict.fromkeys((*HEAVY, "mlflow"), False)


def test_evaluate_logging_its_run_loads_no_torch(synthetic_store, tmp_path):
    db = tmp_path / "mlflow.db"
    shutil.copy(synthetic_store.path, db)
    loaded = _loaded(f"""
        from medtl.mlops.cli import main
        rc = main(["evaluate", "--study", {STUDY!r}, "--tracking-uri", {f"sqlite:///{db}"!r},
                   "--out", {str(tmp_path / "rep")!r}])
        assert rc == 0, rc
    """)
    assert loaded["mlflow"], "the evaluation run is logged through MLflow's client"
    assert not any(loaded[m] for m in HEAVY), loaded


def test_serve_report_loads_no_torch(synthetic_store):
    loaded = _loaded(f"""
        from medtl.evaluation.service import EvaluationService
        service = EvaluationService({synthetic_store.uri!r})
        response = service.handle("GET", "/studies/{STUDY}/report.html")
        assert response.status == 200, response.status
        import medtl.mlops.commands.serve, medtl.mlops.cli
        medtl.mlops.cli.build_parser()
    """)
    assert not any(loaded[m] for m in HEAVY), loaded
