"""Layer boundaries read from the source: orchestration never imports the command line."""

from __future__ import annotations

import ast
from pathlib import Path

import medtl

PACKAGE = Path(medtl.__file__).parent
COMMANDS = "medtl.mlops.commands"
CLI = "medtl.mlops.cli"


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at top level or inside a function, as dotted names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _offenders(modules: list[Path], forbidden: str) -> list[str]:
    return sorted(
        f"{p.name if not p.is_relative_to(PACKAGE) else p.relative_to(PACKAGE.parent)} imports {name}"
        for p in modules
        for name in _imports(p)
        if name == forbidden or name.startswith(forbidden + ".")
    )


def test_the_import_reader_sees_function_level_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from medtl.mlops.commands.pretrain import run\n    import medtl.mlops.cli\n")
    assert _offenders([probe], COMMANDS) == [
        "probe.py imports medtl.mlops.commands.pretrain",
        "probe.py imports medtl.mlops.commands.pretrain.run",
    ]
    assert _offenders([probe], CLI) == ["probe.py imports medtl.mlops.cli"]


def test_no_module_outside_the_cli_imports_a_command_module():
    outside = [
        p
        for p in PACKAGE.rglob("*.py")
        if "commands" not in p.relative_to(PACKAGE).parts and p != PACKAGE / "mlops" / "cli.py"
    ]
    assert len(outside) > 20  # the walk found the package, not an empty folder
    assert _offenders(outside, COMMANDS) == []


def test_commands_do_not_import_back_from_the_cli():
    commands = sorted((PACKAGE / "mlops" / "commands").glob("*.py"))
    assert len(commands) > 10
    assert _offenders(commands, CLI) == []


def _calls(path: Path) -> set[str]:
    """Dotted names of every call in `path` whose callee is an attribute of a plain name (`os.replace`)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name):
            found.add(f"{node.func.value.id}.{node.func.attr}")
    return found


def test_only_the_atomic_module_renames_files_into_place():
    """One atomic write (temporary beside, fsync, rename, cleanup): no writer renames files on its own."""
    root = PACKAGE.parent
    sources = [*PACKAGE.rglob("*.py"), *(root / "benchmarks").glob("*.py"), *(root / "scripts").glob("*.py")]
    assert len(sources) > 40
    renames = {"os.replace", "os.rename", "shutil.move", "tempfile.mkstemp", "tempfile.mkdtemp"}
    offenders = sorted(
        f"{p.relative_to(root)}: {call}"
        for p in sources
        if p != PACKAGE / "atomic.py"
        for call in _calls(p) & renames
    )
    # the registry's one mkdtemp is a scratch folder for downloaded weights, not a file put in place
    assert offenders == ["medtl/mlops/tracking/registry.py: tempfile.mkdtemp"]
