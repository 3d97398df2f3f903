"""The layers import one way (see lib/core/__init__.py): lib/core/ needs nothing above it; dataloader/ and model/
need only lib/core/ (and themselves); the pipeline stages in lib/ sit above them. Checked on every import statement,
also those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

# the packages a module of each folder may import from the repository (itself aside)
ALLOWED = {
    "lib/core": {"lib.core"},
    "dataloader": {"lib.core", "dataloader"},
    "model": {"lib.core", "model"},
    "lib": {"lib", "lib.core", "dataloader", "model"},
}


def repo_imports(path: Path) -> set[str]:
    """The repository modules ``path`` imports (``lib...``, ``dataloader...``, ``model...``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.split(".")[0] in ("lib", "dataloader", "model")}


def package_of(module: str) -> str:
    """``lib.core.x`` → ``lib.core``; ``lib.x`` → ``lib``; ``model.x`` → ``model``."""
    return "lib.core" if module == "lib.core" or module.startswith("lib.core.") else module.split(".")[0]


MODULES = [(folder, path) for folder in ALLOWED for path in sorted((REPO / folder).glob("*.py"))]


@pytest.mark.parametrize("folder,path", MODULES, ids=[str(p.relative_to(REPO)) for _, p in MODULES])
def test_imports_go_down_the_layers(folder, path):
    wrong = sorted(m for m in repo_imports(path) if package_of(m) not in ALLOWED[folder])
    assert not wrong, f"{path.relative_to(REPO)} imports {wrong} from above its layer"


def test_the_rule_catches_an_upward_import(tmp_path):
    upward = tmp_path / "m.py"
    upward.write_text("def f():\n    from lib.segmenter import Segmenter\n")
    assert {package_of(m) for m in repo_imports(upward)} - ALLOWED["dataloader"] == {"lib"}


@pytest.mark.parametrize("module", ["lib.generate", "lib.prepare", "dataloader.manifest", "lib.core.statistics",
                                    "lib.core.padding"])
def test_data_preparation_starts_without_torch(module):
    """Importing torch takes 2.5 s here: the stages that need no model (generate, prepare) do not import it."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')[:3])"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", f"{module} imports {done.stdout.strip()}"
