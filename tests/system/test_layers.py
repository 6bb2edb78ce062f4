"""The packages are one-way layers (the `[tool.importlinter]` contract in pyproject.toml): `lint-imports`
keeps it, and breaks it, naming the import, when a lower layer imports a higher one."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from lsp_exp.run.config import PROJECT_ROOT

LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"   # import-linter, a dev extra


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` of the package under `root` against the project's contract."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: pip install -e '.[dev]' (import-linter)"
    env = {**os.environ, "PYTHONPATH": str(root)}   # (the package under `root`, not the installed one)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(PROJECT_ROOT / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    result = lint_imports(PROJECT_ROOT)
    assert result.returncode == 0, f"an import goes up a layer:\n{result.stdout}{result.stderr}"
    assert "1 kept, 0 broken" in result.stdout


def test_an_upward_import_is_named(tmp_path):
    """A copy of the package where core imports run: the contract breaks and names that import."""
    shutil.copytree(PROJECT_ROOT / "lsp_exp", tmp_path / "lsp_exp",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    (tmp_path / "lsp_exp" / "core" / "upward.py").write_text("from lsp_exp.run.config import PROJECT_ROOT\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "lsp_exp.core is not allowed to import lsp_exp.run" in result.stdout
    assert "lsp_exp.core.upward -> lsp_exp.run.config (l.1)" in result.stdout
