"""Makes the repository importable from a notebook, and says where it is.

Jupyter starts a notebook's kernel in ``notebooks/``, one level below the packages (``lib/``, ``dataloader/``,
``model/``); the first cell of every notebook imports this module (``from _repo import ROOT``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def resolve_data_root(given: str | None, configured: str) -> Path:
    """The data folder of a notebook: ``given`` (its ``data_root`` parameter, relative to ``notebooks/`` as the
    notebooks' other paths), or, when None, the parameters file's ``data.root`` (``configured``), relative to the
    repository root as the commands read it from there; an absolute path stays as it is."""
    return Path(given) if given is not None else ROOT / configured
