"""torchrun support: process group set-up from the launcher's environment, and small helpers."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import torch
import torch.distributed as dist

from lib.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (rank 0 of 1 for a plain ``python train.py``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True in a worker process of a multi-process torchrun job (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    if not launched_by_torchrun():
        return DistInfo()
    world, rank, local = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        gpus = torch.cuda.device_count()
        if local >= gpus:
            raise UserError(f"torchrun started process {local + 1} on this machine but only {gpus} CUDA device(s) are "
                            f"visible: one process per GPU (--nproc_per_node at most {gpus}), or --device cpu")
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank, world, local)


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor over all processes (identity in a single process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every process when it is true on any (used to stop all ranks together)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def all_reduce_max(value: int, info: DistInfo, device: torch.device) -> int:
    """The largest of ``value`` over all processes (``value`` itself in a single process)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def on_main(action: Callable[[], T], info: DistInfo) -> T | None:
    """``action()`` on the main process alone (None elsewhere), its :class:`UserError` raised on every process: a
    failure of the main process alone left the others in their next collective (gloo: a traceback; NCCL: a hang).

    Raises:
        UserError: ``action`` raised it on the main process; the others raise one without a message, which
            :func:`lib.core.errors.cli_main` does not print (the main process says why).
    """
    result, failure = None, None
    if info.is_main:
        try:
            result = action()
        except UserError as err:
            failure = err
    if broadcast_from_main(failure is not None, info):
        raise failure if failure is not None else UserError("")
    return result


def broadcast_from_main(value: T, info: DistInfo) -> T:
    """Rank 0's ``value`` (any picklable object) on every process; ``value`` itself in a single process."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int | str | None) -> NoReturn:
    """Exit with ``code`` as ``sys.exit`` would; a torchrun worker skips the interpreter's finalisation.

    Gloo's worker threads outlive ``destroy_process_group`` and free the last collective's tensors a moment after it
    returns. When that moment falls inside Python's finalisation, the thread cannot take the GIL and the process
    aborts (SIGABRT, "terminate called without an active exception"; seen in about 1 of 40 two-process runs). Every
    file is closed by then, so a worker flushes its output and leaves with ``os._exit``.

    Args:
        code: the exit status: ``None`` for 0, an int, or a message (printed to stderr, status 1).
    """
    if not launched_by_torchrun():
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code or 0)
