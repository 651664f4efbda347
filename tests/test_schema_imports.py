"""Schema names come from `medtl.training.schema` itself, in one import style; no module passes them on.

A tag or experiment name read as `T.STAGE_TAG` in one place and `S.STAGE_TAG` in the next hides where it
is defined; re-exports also let a module's own helper imports become part of its interface. The rules,
read from the source: (1) no module re-exports a schema name (`from medtl.training.schema import X as X`,
`__all__`) and no module takes one through another module; (2) the tracking modules pass on nothing
they do not define; (3) every module imports the schema as `from medtl.training import schema as S`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import medtl

PACKAGE = Path(medtl.__file__).parent
ROOT = PACKAGE.parent
SCHEMA = "medtl.training.schema"
STYLE = "from medtl.training import schema as S"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in PACKAGE.rglob("*.py")}


def _defined(path: Path) -> set[str]:
    """The top-level names `path` defines itself (functions, classes, assignments), not those it imports."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


DEFINED = {name: _defined(path) for name, path in MODULES.items()}
SCHEMA_NAMES = DEFINED[SCHEMA]


def _borrowed(path: Path) -> list[tuple[str, str, int]]:
    """(module, name, line) for every name `path` takes from a medtl module that does not define it.

    Both `from M import N` and `A.N` with `A` bound to module M (`from medtl.x import m as A`,
    `import medtl.x.m as A`) count, at any depth (function-level imports too).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, str, int]] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in MODULES:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif alias.name != "*" and alias.name not in DEFINED[node.module]:
                    found.append((node.module, alias.name, node.lineno))
        elif isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if node.attr not in DEFINED[module] and f"{module}.{node.attr}" not in MODULES:
                found.append((module, node.attr, node.lineno))
    return found


def _exported(path: Path) -> set[str]:
    """Names `path` re-exports on purpose: `from M import X as X`, or listed in `__all__` without being defined."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.asname == alias.name
    }
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            listed = {e.value for e in ast.walk(node.value) if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            names |= listed - _defined(path)
    return names


def _style_offences(path: Path) -> list[str]:
    """Every import of the schema in `path` written other than `from medtl.training import schema as S`."""
    offences = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == SCHEMA:
            offences.append(f"line {node.lineno}: from {SCHEMA} import ...")
        elif isinstance(node, ast.ImportFrom) and node.module == "medtl.training":
            offences += [f"line {node.lineno}: schema as {a.asname}" for a in node.names if a.name == "schema" and a.asname != "S"]
        elif isinstance(node, ast.Import):
            offences += [f"line {node.lineno}: import {a.name}" for a in node.names if a.name == SCHEMA]
    return offences


def _sources() -> list[Path]:
    found = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    return [*found, *(ROOT / "scripts").glob("*.py")]


def test_the_readers_see_borrowed_names_exports_and_other_styles(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from medtl.mlops.tracking import client as T\n"
        "from medtl.training.schema import STAGE_TAG as STAGE_TAG\n"
        "__all__ = ['RUN_KEY_TAG', 'f']\n"
        "def f():\n"
        "    from medtl.mlops.tracking.runner import ARM_TAG\n"
        "    import medtl.training.schema as schema\n"
        "    return T.RUN_KEY_TAG, T.retrying, schema.STUDY_TAG\n"
    )
    assert sorted(_borrowed(probe)) == [
        ("medtl.mlops.tracking.client", "RUN_KEY_TAG", 7),
        ("medtl.mlops.tracking.runner", "ARM_TAG", 5),
    ]
    assert _exported(probe) == {"STAGE_TAG", "RUN_KEY_TAG"}
    assert _style_offences(probe) == [f"line 2: from {SCHEMA} import ...", f"line 6: import {SCHEMA}"]
    assert {"STAGE_TAG", "RUN_KEY_TAG", "resolve_tracking_uri", "Stage"} <= SCHEMA_NAMES
    assert "RunSpec" not in SCHEMA_NAMES  # imported by the schema, not one of its names


def test_no_module_reexports_a_schema_name():
    sources = _sources()
    assert len(sources) > 100
    taken = sorted(
        f"{p.relative_to(ROOT)}:{line}: {name} through {module}"
        for p in sources
        for module, name, line in _borrowed(p)
        if name in SCHEMA_NAMES
    )
    assert taken == []
    exported = sorted(
        f"{p.relative_to(ROOT)}: {name}" for p in PACKAGE.rglob("*.py") if p != MODULES[SCHEMA] for name in _exported(p) & SCHEMA_NAMES
    )
    assert exported == []


def test_the_tracking_modules_pass_on_nothing_they_do_not_define():
    tracking = "medtl.mlops.tracking."
    taken = sorted(
        f"{p.relative_to(ROOT)}:{line}: {name} through {module}"
        for p in _sources()
        for module, name, line in _borrowed(p)
        if module.startswith(tracking)
    )
    assert taken == []
    assert [f"{name}: {sorted(_exported(MODULES[name]))}" for name in MODULES if name.startswith(tracking) and _exported(MODULES[name])] == []


def test_one_import_style_for_schema_names():
    modules = list(PACKAGE.rglob("*.py"))
    assert len(modules) > 100
    offences = sorted(f"{p.relative_to(ROOT)} {offence}" for p in modules for offence in _style_offences(p))
    assert offences == [], f"write `{STYLE}` and `S.<name>`"
