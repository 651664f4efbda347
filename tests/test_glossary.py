"""The glossary (docs/architecture.md) read against the code: retired names for its concepts do not come back."""

from __future__ import annotations

import re
from pathlib import Path

import medtl

PACKAGE = Path(medtl.__file__).parent
ROOT = PACKAGE.parent

# name retired -> the glossary's name for the concept
RETIRED = {
    r"\bGROUP_TAG\b": "ARM_TAG (arm)",
    r"\bspec\.group\b": "spec.arm (arm)",
    r"\bdef group\(": "RunSpec.arm (arm)",
    r"\bFinetuneJob\b": "FinetuneRecipe (recipe)",
    r"\bPretrainJob\b": "PretrainRecipe (recipe)",
    r"\brun_job\b": "run_recipe (recipe)",
    r"\bretry_point\b": "requeue_failed (re-queue)",
    r"\bmax_retries\b": "max_requeues (re-queue)",
    r"\bretry_budget_s\b": "knobs.infra_patience_s (one infrastructure budget)",
    # evaluation: the arm is the column `arm`; published files keep `group` through formatting.published
    r'\["group"\]': 'column "arm" (arm)',
    r'"group", "(?:lr|status|data_fraction)"': 'column "arm" in key and column lists (arm)',
    r"\b(?:LrChoice|ArmCount)\(.*\bgroup\b": "LrChoice.arm, ArmCount.arm (arm)",
}


def test_retired_names_are_gone_from_the_code():
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *(ROOT / "scripts").glob("*.py")]
    assert len(sources) > 40
    found = sorted(
        f"{path.relative_to(ROOT)}:{number}: {pattern} -> use {name}"
        for path in sources
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for pattern, name in RETIRED.items()
        if re.search(pattern, line)
    )
    assert found == []


def test_the_glossary_names_what_the_code_defines():
    """Every code name the glossary cites exists, so the page cannot drift from the code unnoticed."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    glossary = text.split("## Glossary", 1)[1].split("\n## ", 1)[0]
    from medtl import knobs
    from medtl.mlops.sweeps import queue
    from medtl.mlops.tracking import runner
    from medtl.training import finetune, pretrain, recipe, schema
    from medtl.training.spec import RunSpec

    cited = {
        "RunSpec.arm": hasattr(RunSpec, "arm"),
        "medtl.arm": schema.ARM_TAG == "medtl.arm",
        "medtl.group": schema.LEGACY_ARM_TAG == "medtl.group",
        "FinetuneRecipe": hasattr(finetune, "FinetuneRecipe"),
        "PretrainRecipe": hasattr(pretrain, "PretrainRecipe"),
        "RecipeResult": hasattr(recipe, "RecipeResult"),
        "run_recipe": hasattr(runner, "run_recipe"),
        "requeue_failed": hasattr(queue, "requeue_failed"),
        "put_back": hasattr(queue, "put_back"),
        "max_requeues": "max_requeues" in knobs.Knobs.__dataclass_fields__,
        "infra_patience_s": hasattr(knobs, "infra_patience_s"),
        "MEDTL_INFRA_PATIENCE_S": knobs.INFRA_PATIENCE_ENV == "MEDTL_INFRA_PATIENCE_S",
        "MEDTL_MAX_REQUEUES": knobs.REQUEUES_ENV == "MEDTL_MAX_REQUEUES",
    }
    assert {name for name in cited if name not in glossary} == set()
    assert {name for name, ok in cited.items() if not ok} == set()
