"""Print where to open the MLflow UI on this store: a study's runs table, not MLflow 3's GenAI overview.

Used by `make ui` (before it starts the server) and at the end of `make sweep` (with `--champions`,
also the registered models' champions). Reads the experiment id
of `medtl/<study>` from the SQLite store; without a store or that experiment it prints the UI's root.

    python scripts/ui_link.py --db mlflow.db --study demo --ui-url http://127.0.0.1:5000
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from medtl.evaluation.links import DEFAULT_UI_URL, experiment_url


def experiment_id(db: Path, name: str) -> str | None:
    """The id of the active experiment `name` in the SQLite tracking store `db`, or None.

    Read with sqlite3 directly (MLflow's `experiments` table) so the link prints in milliseconds,
    without importing MLflow, and without creating the store when it does not exist yet.
    """
    if not db.is_file():
        return None
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            row = conn.execute(
                "SELECT experiment_id FROM experiments WHERE name = ? AND lifecycle_stage = 'active'", (name,)
            ).fetchone()
        except sqlite3.DatabaseError:
            return None
    return None if row is None else str(row[0])


def champions(db: Path) -> list[tuple[str, str]]:
    """(registered model, version) of every `champion` alias in the SQLite store `db`, sorted by name."""
    if not db.is_file():
        return []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        try:
            rows = conn.execute(
                "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion' ORDER BY name"
            ).fetchall()
        except sqlite3.DatabaseError:
            return []
    return [(str(name), str(version)) for name, version in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("mlflow.db"), help="SQLite tracking store (default mlflow.db)")
    parser.add_argument("--study", default="demo", help="study name: experiment medtl/<study> (default demo)")
    parser.add_argument("--ui-url", default=DEFAULT_UI_URL, help=f"the UI's address (default {DEFAULT_UI_URL})")
    parser.add_argument("--champions", action="store_true", help="also list the registered champions")
    args = parser.parse_args(argv)
    if args.champions:
        found_champions = champions(args.db)
        print("Registered champions:" if found_champions else f"Registered champions: none in {args.db}")
        for name, version in found_champions:
            print(f"  models:/{name}@champion  (version {version})")
    found = experiment_id(args.db, f"medtl/{args.study}")
    if found is None:
        print(f"MLflow UI: {args.ui_url.rstrip('/')}/  (no study {args.study!r} in {args.db} yet: run `make sweep`)")
    else:
        print(f"MLflow UI, the {args.study} study's runs: {experiment_url(args.ui_url, found)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
