"""Where a run ran: MLflow's source tags (program, commit, user) and medtl's environment tags (versions, device)."""

from __future__ import annotations

import functools
import getpass
import platform
import sys
from pathlib import Path

from medtl.provenance import git_commit
from medtl.training import schema as S


def source_tags(commit: str | None = None) -> dict[str, str]:
    """MLflow's own source tags (the UI's Source, commit and user fields) for a run started here."""
    # The program and its subcommand (`medtl worker`), never a path argument: folders can name people.
    command = [a for a in sys.argv[1:2] if "/" not in a and "\\" not in a and not a.startswith("-")]
    entry = [Path(sys.argv[0]).name or "python", *command] if sys.argv else ["python"]
    tags = {
        "mlflow.source.name": " ".join(entry),
        "mlflow.source.type": "LOCAL",
        "mlflow.user": user(),
    }
    commit = commit or git_commit()
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def user() -> str:
    """The login name (MLflow's `mlflow.user`; who promoted, in the alias history), or `unknown`."""
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def medtl_version() -> str:
    """The installed medtl's version, or `unknown` for a source tree never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medtl")
    except PackageNotFoundError:
        return "unknown"


def environment_tags(device: str = "cpu") -> dict[str, str]:
    """What a result depends on beyond the code: medtl, torch, torchvision, CUDA, cuDNN, the device.

    Tags (not params): a resumed attempt on another machine records where it ran last.
    """
    import torch
    import torchvision

    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = _cpu_name()
    env = {
        "medtl": medtl_version(),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": str(torchvision.__version__),
        "cuda": cuda,  # the CUDA torch was built with
        "cuda_available": str(torch.cuda.is_available()),
        "cudnn": str(cudnn) if cudnn else "none",
        "device_name": name,
        "host_os": f"{platform.system()} {platform.release()}",
    }
    return {f"{S.ENV_TAG_PREFIX}{key}": value for key, value in env.items()}


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
