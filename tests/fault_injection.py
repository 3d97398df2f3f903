"""Run a project command and SIGKILL it (or fail a write) at a chosen moment, to test what survives.

    FAULT=KIND:N python tests/fault_injection.py train.py ARGS...      (or -m lib.generate ARGS...)

KIND is ``replace`` (killed just before the N-th atomic rename: the temporary file is whole, the target untouched),
``partial`` (killed while writing the N-th file: half of it is on disk under its temporary name), ``step`` (killed
before the N-th training step), ``enospc`` (the N-th atomic write fails with "No space left on device"),
``events`` (the N-th TensorBoard scalar fails so) or ``eventfile`` (the N-th record TensorBoard's writer thread
writes to its file fails so).
"""

from __future__ import annotations

import errno
import os
import runpy
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lib.core.atomic as atomic  # noqa: E402
import lib.training as training  # noqa: E402

kind, count = os.environ["FAULT"].split(":")
count = int(count)
calls = {"n": 0}


def _due() -> bool:
    calls["n"] += 1
    return calls["n"] == count


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


if kind == "replace":
    real_replace = atomic.os.replace

    def replace(src, dst):
        if _due():
            _kill()
        return real_replace(src, dst)

    atomic.os.replace = replace
elif kind in ("partial", "enospc"):
    real_settle = atomic._settle  # every atomic write passes here, durable or inside deferred_sync

    def settle(tmp):
        if _due():
            if kind == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.truncate(tmp, tmp.stat().st_size // 2)
            _kill()
        return real_settle(tmp)

    atomic._settle = settle
elif kind == "step":
    real_make_inputs = training.make_inputs

    def make_inputs(*args, **kwargs):
        if _due():
            _kill()
        return real_make_inputs(*args, **kwargs)

    training.make_inputs = make_inputs
elif kind == "events":
    from torch.utils.tensorboard import SummaryWriter

    real_add_scalar = SummaryWriter.add_scalar

    def add_scalar(self, *args, **kwargs):
        if _due():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_add_scalar(self, *args, **kwargs)

    SummaryWriter.add_scalar = add_scalar
elif kind == "eventfile":
    from tensorboard.summary.writer.record_writer import RecordWriter

    real_write = RecordWriter.write

    def write(self, data):
        if _due():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, data)

    RecordWriter.write = write
else:
    raise SystemExit(f"unknown fault kind {kind!r}")

target, sys.argv = sys.argv[1], sys.argv[1:]
if target == "-m":
    sys.argv = sys.argv[1:]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
