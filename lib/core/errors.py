"""One kind of error for bad user input, and a CLI wrapper that turns it into one line and exit code 2."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
import threading
from collections.abc import Callable
from typing import NoReturn, TypeVar

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command stopped by Ctrl-C


class UserError(Exception):
    """Bad input from the user (a file, a key, a value): reported as one line, never as a traceback."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose own errors (an unknown flag, a value of the wrong type or not among the choices) are
    one line like a :class:`UserError`'s, ``error: <what argparse says> (see <prog> --help)``, with exit code 2, in
    place of its usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {' '.join(message.split())} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def write_error(path: object, err: OSError) -> UserError:
    """The one-line error of a write that failed: ``<path>: cannot write (<the system's reason>)``, e.g. ``No space
    left on device``."""
    return UserError(f"{path}: cannot write ({err.strerror or err})")


def cli_main(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command-line entry point: a :class:`UserError` prints ``error: ...`` and exits with code 2; Ctrl-C
    prints one line instead of a traceback and exits with code 130 (the writes are atomic, so what is on disk is whole).

    Args:
        main: the entry point.

    Returns:
        The wrapped entry point.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        handler = signal.getsignal(signal.SIGINT)
        if getattr(handler, "__module__", None) == "lib.core.startup" and \
                threading.current_thread() is threading.main_thread():
            # the imports are done: KeyboardInterrupt again, the handler lib.core.startup replaced
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            return main(*args, **kwargs)
        except UserError as err:
            message = " ".join(str(err).split())  # always one line
            if message:  # (none: another torchrun process of the run says why, lib.core.distributed.on_main)
                print(f"error: {message}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt as err:  # a command may say what to do next (train.py: what to resume from)
            print(f"interrupted: every file written so far is whole; {str(err) or 'rerun the command to finish'}",
                  file=sys.stderr)
            sys.exit(getattr(err, "exit_status", EXIT_INTERRUPTED))  # train.py's second SIGTERM: 143

    return wrapper
