"""Pieces of train.py that tests and other scripts reuse: batching, evaluation, run folders."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn as nn

from lib.core.atomic import make_folder
from lib.core.device import Runtime, autocast, move_pixels
from lib.core.distributed import all_reduce_sum
from lib.core.errors import UserError, write_error
from lib.core.metrics import confusion_matrix
from lib.core.normalization import normalize
from model.unet_model import UNet


def batches(indices: torch.Tensor, batch_size: int, least: int = 1) -> Iterator[torch.Tensor]:
    """Consecutive slices of ``indices`` of ``batch_size``. The last one may be shorter; one shorter than ``least``
    joins the batch before it (where there is one)."""
    starts = list(range(0, len(indices), batch_size))
    if len(starts) > 1 and len(indices) - starts[-1] < least:
        starts.pop()
    for i, start in enumerate(starts):
        yield indices[start:starts[i + 1] if i + 1 < len(starts) else len(indices)]


def smallest_batch(patch_size: int) -> int:
    """The fewest patches a training batch may hold: BatchNorm trains on more than one value per channel, and below
    32 pixels the U-Net's bottom level is 1×1, one value per patch."""
    return 2 if UNet.bottom_side(patch_size) < 2 else 1


def make_inputs(images: torch.Tensor, idx: torch.Tensor, normalization: dict, runtime: Runtime,
                image_stats: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised float inputs of the patches ``idx`` on the runtime's device, in its memory format.

    ``image_stats`` (N×2×C, beside ``images``) are the source-image statistics that ``image`` normalisation needs.
    """
    device = runtime.device
    stats = image_stats[idx.to(image_stats.device)].to(device) if image_stats is not None else None
    x = normalize(move_pixels(images[idx.to(images.device)], device), normalization, stats)
    return x.contiguous(memory_format=runtime.memory_format)


def forward(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor, normalization: dict,
            runtime: Runtime, image_stats: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward pass of train.py and of the evaluation on the patches ``idx``: normalised inputs, the model under
    the runtime's autocast precision.

    Returns:
        ``(logits, targets)``: N×C×P×P logits, N×P×P int64 class indices on the device.
    """
    x = make_inputs(images, idx, normalization, runtime, image_stats)
    y = masks[idx.to(masks.device)].to(runtime.device).long()
    with autocast(runtime.device, runtime.precision):
        return model(x), y


def forward_loss(model: nn.Module, loss_fn: nn.Module, images: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor,
                 normalization: dict, runtime: Runtime, image_stats: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`forward` and the loss on its float32 logits: ``(logits, targets, scalar loss)``."""
    logits, y = forward(model, images, masks, idx, normalization, runtime, image_stats)
    return logits, y, loss_fn(logits.float(), y)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    """Backward pass and the optimiser's update (SGD or AdamW) through the GradScaler (a pass-through unless
    training in fp16)."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


@torch.inference_mode()
def evaluate(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, indices: torch.Tensor,
             normalization: dict, loss_fn: nn.Module, n_classes: int, runtime: Runtime, batch_size: int = 64,
             image_stats: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Loss and confusion matrix over the patches ``indices``, each as if of one batch of them all: the loss from the
    sums of its statistics over batches (``loss_fn.sums``, ``loss_fn.from_sums``: a class-weighted mean or a Dice
    term of a batch's own would move with the batch size) and the summed confusion matrix. Each process takes every
    world_size-th patch and the sums are reduced over processes, so the result equals a single-process evaluation.

    Returns:
        ``(loss, confusion matrix)``.
    """
    was_training = model.training
    model.eval()
    device, info = runtime.device, runtime.dist
    shard = indices[info.rank::info.world_size]
    cm = torch.zeros(n_classes, n_classes, dtype=torch.long, device=device)
    sums = None
    for idx in batches(shard, batch_size):
        logits, y = forward(model, images, masks, idx, normalization, runtime, image_stats)
        batch = loss_fn.sums(logits.float(), y).double()
        sums = batch if sums is None else sums + batch
        cm += confusion_matrix(y, logits.argmax(1), n_classes)
    if sums is None:  # a process given no patch (fewer than processes) adds zeros, shaped as a pixel's sums
        pixel = torch.zeros(1, n_classes, 1, 1, device=device), torch.zeros(1, 1, 1, dtype=torch.long, device=device)
        sums = loss_fn.sums(*pixel).double() * 0
    all_reduce_sum(cm, info)
    all_reduce_sum(sums, info)
    model.train(was_training)
    return float(loss_fn.from_sums(sums)), cm.cpu()


def predict_labels(model: nn.Module, images: torch.Tensor, idx: torch.Tensor, normalization: dict,
                   runtime: Runtime, image_stats: torch.Tensor | None = None) -> torch.Tensor:
    """Argmax labels of a few patches (for the TensorBoard figure)."""
    was_training = model.training
    model.eval()
    with torch.inference_mode(), autocast(runtime.device, runtime.precision):
        labels = model(make_inputs(images, idx, normalization, runtime, image_stats)).argmax(1).cpu()
    model.train(was_training)
    return labels


def new_run_name(folder: str, name: str | None, checkpoints_dir: Path, runs_dir: Path, claim: bool = True) -> str:
    """A run name that exists in neither ``runs/`` nor ``checkpoints/`` (nothing of an earlier run is overwritten):
    ``name``, or ``<folder>_<date-time>`` (with ``_2``, ``_3``, ... while taken).

    Args:
        claim: take the name by creating its checkpoint folder, in one step that only one of two runs started
            together can pass (the process that writes the run's files); without it the name is only checked for
            form (another process of the same run, which writes nothing).

    Raises:
        UserError: an explicitly chosen ``name`` is taken or not a plain folder name.
    """
    if name is not None:
        # \w: letters and digits of any script; 200 bytes stays clear of the file systems' 255-byte names
        # not starting with "." (hidden from ls and `make figures`) or "-" (read as an option)
        if not re.fullmatch(r"\w[\w.-]*", name) or len(name.encode()) > 200:
            raise UserError(f"--name {name[:40]!r}{'...' if len(name) > 40 else ''}: expected a plain folder name "
                            "(letters, digits, . _ -, not starting with . or -) of at most 200 bytes")
        if claim and not _claim(checkpoints_dir, runs_dir, name):
            raise UserError(f"--name {name}: {_taken_by(checkpoints_dir / name, runs_dir / name)}")
        return name
    base = f"{Path(folder).name}_{time.strftime('%Y%m%d-%H%M%S')}"
    candidate, k = base, 1
    while claim and not _claim(checkpoints_dir, runs_dir, candidate):
        k += 1
        candidate = f"{base}_{k}"
    return candidate


def _claim(checkpoints_dir: Path, runs_dir: Path, name: str) -> bool:
    """Create the checkpoint folder of run ``name`` if the name is free: False if either of its folders exists.

    Raises:
        UserError: the folder cannot be created (a file in the way, no permission).
    """
    folder = checkpoints_dir / name
    if folder.exists() or (runs_dir / name).exists():
        return False
    make_folder(checkpoints_dir)
    try:
        folder.mkdir()  # fails for all but one of the runs that try at once
    except FileExistsError:
        return False
    except OSError as err:
        raise UserError(f"{folder}: cannot create the run's checkpoint folder ({err.strerror or err})") from None
    return True


def _taken_by(checkpoints: Path, events: Path) -> str:
    """Why a run name is taken, and what to do: resume the run, or, when it never saved a checkpoint (it was killed
    in its first epoch, where Ctrl-C would have saved one), remove its folders; nothing is removed here."""
    if any(checkpoints.glob("*.pth")):
        return "a run of that name exists; choose another name or --load to resume it"
    folders = " and ".join(str(f) for f in (checkpoints, events) if f.exists())
    return (f"a run of that name was started but has saved no checkpoint (it is in its first epoch, or was stopped "
            f"there); if it is not running, remove {folders} to reuse the name, or choose another name")


class EventWriter:
    """TensorBoard's ``SummaryWriter`` of one run, which a failed write (a full disk) does not stop: it is kept
    (:attr:`error`, naming the folder) and nothing more is written, so the run raises it where it chooses
    (:meth:`raise_error`, after the epoch's checkpoint). Raised at once, it lost the epoch, with a traceback in the
    writer's thread and another in the run."""

    _writer = None  # (attributes of the class: __getattr__ is never asked for them)
    error: UserError | None = None
    reported = False  # the error was raised (else the run notes it as it ends)

    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        _quiet_event_thread_errors()
        self.folder = folder
        try:
            self._writer = SummaryWriter(str(folder))
        except OSError as err:
            raise write_error(folder, err) from None

    def __getattr__(self, name: str):
        method = getattr(self._writer, name)
        if not callable(method):  # a plain attribute (log_dir)
            return method

        def call(*args, **kwargs):
            if self.error is not None:
                return None
            try:
                return method(*args, **kwargs)
            except OSError as err:
                self.error = write_error(self.folder, err)
                return None
        return call

    def close(self) -> None:
        """Close the file (also after a failed write; a failure of its own is kept in :attr:`error`)."""
        try:
            self._writer.close()
        except OSError as err:
            self.error = self.error or write_error(self.folder, err)

    def raise_error(self) -> None:
        """
        Raises:
            UserError: a write failed (``<folder>: cannot write (No space left on device)``).
        """
        if self.error is not None:
            self.reported = True
            raise self.error


def _quiet_event_thread_errors() -> None:
    """Leave a failed write of TensorBoard's writer thread unprinted (once per process): the run's next write gets it
    again, and :class:`EventWriter` keeps it for the run to raise in one line."""
    previous = threading.excepthook
    if getattr(previous, "quiets_event_writer", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread"):
            previous(args)

    hook.quiets_event_writer = True
    threading.excepthook = hook
