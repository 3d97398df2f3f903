"""Imported first by the four commands (``lib.generate``, ``lib.prepare``, ``train.py``, ``predict.py``): a Ctrl-C
while their imports load (torch alone takes seconds) ends the command at once with one line and exit code 130,
instead of a traceback from inside an import. Nothing has been written by then. :func:`lib.core.errors.cli_main`
gives Ctrl-C back to Python (``KeyboardInterrupt``) when the command's ``main`` starts.

Only a command run as the program installs it: a test or a notebook that imports a command keeps its own Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from lib.core.errors import EXIT_INTERRUPTED

COMMANDS = {"generate.py", "prepare.py", "train.py", "predict.py"}
_REPO = Path(__file__).resolve().parents[2]


def _interrupted(signum: int, frame: object) -> None:
    sys.stderr.write("interrupted before the command started: nothing was written\n")
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)  # at once: the imports under way have nothing to clean up


def running_a_command() -> bool:
    """Whether the program (``__main__``) is one of the repository's commands."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if path is None:
        return False
    path = Path(path).resolve()
    return path.name in COMMANDS and path.parent in (_REPO, _REPO / "lib")


# only over Python's own KeyboardInterrupt: a Ctrl-C the launcher ignores (``cmd &`` in a script, nohup) stays ignored
if running_a_command() and threading.current_thread() is threading.main_thread() and \
        signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _interrupted)
