"""How the demo's budget was chosen: its own grid points at several learning rates, random vs domain arm.

Builds the demo's pretraining set in a scratch folder (archive, ingest, pseudo-labels), pretrains
resnet18 once as the study's `pretrain:` section says, then fits and tests each grid point of
`configs/demo.yaml` for the random and domain arms (all tasks, all seeds) at every `--lrs` value, with
`FinetuneRecipe` directly: no MLflow, so it measures the training, not the platform. Every learning rate
uses the same pretrained weights. Per task it reports the arms' mean test primary metric and mean
epochs to convergence (the epoch of the lowest validation loss), each with scipy's default two-sided
Mann–Whitney p (one pair, so the paper mode's Bonferroni leaves it as is), and how many random-arm points
never improved on their first epoch (best epoch 1: a model that never learnt, not a fast one).

Usage: python benchmarks/bench_demo_design.py [--lrs 1e-3 3e-4 2e-4 1e-4] [--study configs/demo.yaml]
       [--max-epochs N] [--patience N] [--fraction F] [--batch-size N]   (overrides, to try other budgets)
About 2 minutes per learning rate on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from scipy.stats import mannwhitneyu

from medtl.mlops.sweeps.study import load_study
from medtl.training.archive.demo_archive import write_demo_archive
from medtl.training.archive.ingest import ingest
from medtl.training.archive.pseudolabel import pseudolabel
from medtl.training.finetune import FinetuneRecipe
from medtl.training.pretrain import PretrainRecipe
from medtl.training.spec import Init, PretrainSpec

ROOT = Path(__file__).resolve().parent.parent


def _pretrained(folder: Path, study) -> Path:
    write_demo_archive(folder / "archive", patients=60)  # as the Makefile writes it
    # 64 px, as the Makefile ingests it: pretraining then downsamples to the study's 32 px from there.
    ingest(folder / "archive", folder / "set", key=b"bench-key-0123456789abcdef", size=64, progress=False)
    pseudolabel(folder / "set", clusters=6)
    settings = {k: v for k, v in study.pretrain.items() if k != "data"}
    recipe = PretrainRecipe.prepare(PretrainSpec(arch="resnet18", data=str(folder / "set"), **settings), folder / "pretrain")
    state = recipe.fit()
    print("pretraining, validation loss per epoch:", [round(h["val_loss"], 3) for h in state.history],
          f"best epoch {state.best_epoch}", file=sys.stderr, flush=True)
    return recipe.checkpoints.best


def _p(a: list[float], b: list[float]) -> float:
    return float("nan") if len(set(a) | set(b)) == 1 else float(mannwhitneyu(a, b).pvalue)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 3e-4, 2e-4, 1e-4])
    parser.add_argument("--max-epochs", type=int)
    parser.add_argument("--patience", type=int)
    parser.add_argument("--fraction", type=float)
    parser.add_argument("--batch-size", type=int)
    args = parser.parse_args(argv or [])
    study = load_study(Path(args.study))
    overrides = {k: v for k, v in {"max_epochs": args.max_epochs, "patience": args.patience,
                                   "data_fraction": args.fraction, "batch_size": args.batch_size}.items() if v is not None}
    lowest = min(s.lr for s in study.specs)  # one point per (task, arm, seed); --lrs sets the rate
    base = [s for s in study.specs if s.init in (Init.RANDOM, Init.DOMAIN) and s.lr == lowest]
    rows = []
    with tempfile.TemporaryDirectory(prefix="medtl-demo-design-") as name:
        folder = Path(name)
        weights = _pretrained(folder, study)
        for lr in args.lrs:
            found: dict[tuple[str, str], list[tuple[float, int]]] = {}
            for spec in base:
                spec = dataclasses.replace(spec, lr=lr, **overrides)
                work = folder / "points" / spec.run_key
                recipe = FinetuneRecipe.prepare(spec, work, init_path=weights if spec.init is Init.DOMAIN else None)
                state = recipe.fit()
                metric = recipe.test().metrics[recipe.adapter.primary]
                shutil.rmtree(work, ignore_errors=True)  # two checkpoints per point: keep the disk small
                found.setdefault((spec.task.value, spec.arm), []).append((metric, state.best_epoch))
                print(f"lr {lr:g} {spec.task.value} {spec.arm} seed {spec.seed}: {recipe.adapter.primary} "
                      f"{metric:.3f}, best epoch {state.best_epoch}", file=sys.stderr, flush=True)
            for task in sorted({t for t, _ in found}):
                rand, dom = found[(task, "random")], found[(task, "domain")]
                rm, dm = [m for m, _ in rand], [m for m, _ in dom]
                re_, de = [e for _, e in rand], [e for _, e in dom]
                rows.append({
                    "lr": f"{lr:g}", "task": task,
                    "test metric: domain vs random": f"{statistics.mean(dm):.3f} vs {statistics.mean(rm):.3f}",
                    "p (metric)": round(_p(dm, rm), 4),
                    "epochs to convergence: domain vs random": f"{statistics.mean(de):.1f} vs {statistics.mean(re_):.1f}",
                    "p (epochs)": round(_p(de, re_), 4),
                    "random points that never improved": sum(e == 1 for e in re_),
                })
    return rows


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from run import to_markdown  # noqa: E402 - benchmarks/run.py

    print(to_markdown(main(sys.argv[1:])))
