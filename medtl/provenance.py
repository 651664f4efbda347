"""Which medtl source produced a run: the git commit, read without importing MLflow or torch."""

from __future__ import annotations

import functools
import os
import subprocess
from pathlib import Path


@functools.cache
def git_commit() -> str:
    """The medtl source's git commit: `$MEDTL_GIT_COMMIT` (set in the image), the checkout's, or `unknown`.

    Read once per process: the code a long-running worker executes is the code it started with.
    """
    if os.environ.get("MEDTL_GIT_COMMIT"):
        return os.environ["MEDTL_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
