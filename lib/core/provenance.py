"""What produced a result: git commit and library versions (recorded in checkpoints and TensorBoard)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]  # lib/core/provenance.py → the repository root


def git_commit() -> str:
    """The repository's HEAD commit (with ``-dirty`` when there are uncommitted changes), or ``unknown``."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def versions() -> dict[str, str]:
    """Versions of Python, torch and numpy."""
    return {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__)}
