"""Train the U-Net on a folder of patches.

    python train.py -e 100 -l 0.01 -b 16 -f patches_s96            # the published configuration (GPU)
    python train.py --load checkpoints/<run>/last.pth               # resume a run where it stopped
    torchrun --nproc_per_node=N train.py ...                        # several processes (DDP)

Defaults come from parameters.json; flags override them. Writes TensorBoard events to ``runs/<run>/`` and
checkpoints (``last.pth`` every epoch, ``best.pth`` at the best validation mIoU) to ``checkpoints/<run>/``.
"""

from __future__ import annotations

# isort: off
import lib.core.startup  # noqa: F401  (first: a Ctrl-C while the imports below load ends in one line)
# isort: on
import argparse
import contextlib
import math
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from dataloader.manifest import SOURCES
from dataloader.patches import PatchDataset, split_sources
from lib.core.allocator import retain_freed_memory
from lib.core.atomic import make_folder, remove_stale_temporaries
from lib.core.device import Runtime, move_pixels
from lib.core.distributed import (
    all_reduce_max,
    all_reduce_sum,
    broadcast_flag,
    broadcast_from_main,
    cleanup,
    exit_process,
    on_main,
)
from lib.core.errors import ArgumentParser, UserError, cli_main
from lib.core.losses import make_loss
from lib.core.metrics import iou_per_class, mean_iou
from lib.core.normalization import as_spec, compute_normalization
from lib.core.params import (
    COMPILE_MODES,
    DEVICES,
    LOSSES,
    OPTIMIZERS,
    PRECISIONS,
    Params,
    load_params,
    replace,
)
from lib.core.provenance import git_commit, versions
from lib.core.schedule import SCHEDULES, schedule_factor, set_rate
from lib.training import (
    EventWriter,
    batches,
    evaluate,
    forward_loss,
    new_run_name,
    optimizer_step,
    predict_labels,
    smallest_batch,
)
from model.checkpoint import (
    CheckpointWriter,
    build_checkpoint,
    check_compatible,
    check_resumable,
    checkpoint_params,
    load_checkpoint,
    load_weights,
)
from model.unet_model import UNet

EXIT_NONFINITE = 3
CHECKPOINT_NAMES = ("last.pth", "best.pth", "interrupted.pth")  # what a run writes in its checkpoint folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-e", "--epochs", type=int, help="number of epochs (training.epochs)")
    p.add_argument("-l", "--learning-rate", type=float, help="base learning rate (training.learning_rate)")
    p.add_argument("-b", "--batch-size", type=int, help="patches per step and process (training.batch_size)")
    p.add_argument("-f", "--folder", help="patch folder: a name under data.root (patches_s96), or a path with a '/' "
                                          "(training.folder)")
    p.add_argument("--load", metavar="CKPT", help="resume the run of this checkpoint")
    p.add_argument("--params", metavar="FILE", help="parameters file (default: the repository's parameters.json)")
    p.add_argument("--seed", type=int, help="seed of initialisation, split and shuffling (training.seed)")
    p.add_argument("--device", choices=DEVICES, help="training.device")
    p.add_argument("--precision", choices=PRECISIONS, help="training.precision")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16 where supported, else fp16)")
    p.add_argument("--compile", choices=COMPILE_MODES,
                   help="torch.compile mode of the training steps (training.compile)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="sgd (the published one) or adamw (training.optimizer)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (training.schedule)")
    p.add_argument("--warmup-fraction", type=float, help="share of the steps that warm up, cosine schedule "
                   "(training.warmup_fraction)")
    p.add_argument("--val-fraction", type=float, help="fraction of source images held out (training.val_fraction)")
    p.add_argument("--base-channels", type=int, help="U-Net width (model.base_channels)")
    p.add_argument("--bilinear", action=argparse.BooleanOptionalAction, default=None, help="model.bilinear")
    p.add_argument("--loss", choices=LOSSES, help="training.loss")
    p.add_argument("--name", help="run name (default: <folder>_<date-time>)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP only)")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    return p.parse_args(argv)


def resolve_params(args: argparse.Namespace, resumed: dict | None) -> Params:
    """parameters.json (or, when resuming, the parameters the run was started with), overridden by the flags.

    A resumed run keeps its parameters (a ``--params`` file that says otherwise is reported, see
    :func:`note_ignored_params`, and ignored), and the flags that would change what it has done so far are refused.

    Raises:
        UserError: a resumed run asked for another optimiser, seed or validation share than it was trained with.
    """
    params = checkpoint_params(resumed, args.load) if resumed else load_params(args.params)
    if resumed:
        check_resume_flags(args, params)
    for group, values in flag_values(args).items():
        params = replace(params, group, **values)
    return params


def flag_values(args: argparse.Namespace) -> dict[str, dict]:
    """The parameters the flags set, by group (``None``: not given, parameters.json or the checkpoint decides)."""
    return {"training": dict(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                             folder=args.folder, seed=args.seed, device=args.device, precision=args.precision,
                             val_fraction=args.val_fraction, loss=args.loss, compile=args.compile,
                             schedule=args.schedule, warmup_fraction=args.warmup_fraction, optimizer=args.optimizer),
            "model": dict(base_channels=args.base_channels, bilinear=args.bilinear)}


def check_resume_flags(args: argparse.Namespace, params: Params) -> None:
    """Refuse the flags a resumed run cannot take: another optimiser (its state fits its own only), or another seed
    or validation share (they drew the validation images: changed, the run would validate on images it trained on).

    Raises:
        UserError: naming the flag, the checkpoint and the run's value.
    """
    t = params.training
    if args.optimizer not in (None, t.optimizer):
        raise UserError(f"{args.load}: the run was trained with the {t.optimizer} optimiser; resume it with "
                        f"--optimizer {t.optimizer}")
    for flag, value, kept in (("--seed", args.seed, t.seed), ("--val-fraction", args.val_fraction, t.val_fraction)):
        if value is not None and value != kept:
            raise UserError(f"{flag} {value}: {args.load} drew its validation images with {flag} {kept}, which a "
                            "resumed run keeps (resume without the flag)")


def note_ignored_params(args: argparse.Namespace, params: Params) -> None:
    """Print which values of a ``--params`` file differ from those the resumed run goes on with (its own; those the
    flags set on the command line are left out, as they are not ignored)."""
    path, load = args.params, args.load
    flagged = {f"{group}.{key}" for group, values in flag_values(args).items() for key, v in values.items()
               if v is not None}
    given, kept = _flat(load_params(path).to_dict()), _flat(params.to_dict())
    # (patches.*: the folder's, see with_patch_settings; the file's are lib.prepare's, not ignored by the run)
    differ = [k for k in given if given[k] != kept.get(k) and k not in flagged and not k.startswith("patches.")]
    if differ:
        shown = ", ".join(f"{k} ({given[k]!r}; the run: {kept.get(k)!r})" for k in differ[:3])
        more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
        print(f"note: {path}: {shown}{more} differ from the parameters of {load}, which a resumed run keeps (flags "
              "such as -e and -l override them)", file=sys.stderr)


def _flat(tree: dict, prefix: str = "") -> dict:
    """``{"training": {"seed": 0}}`` as ``{"training.seed": 0}``."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def patch_folder(params: Params) -> Path:
    """``training.folder``: a bare name (``patches_s96``) lies under ``data.root``; a path (absolute, with a separator,
    or ``.`` / ``..``) is taken as given, relative to the working folder, as lib.prepare's ``--out`` is.

    Raises:
        UserError: the value is empty.
    """
    given = params.training.folder
    if not given.strip():
        raise UserError(f"-f/training.folder {given!r}: expected a patch folder name or path")
    name = given.rstrip("/" + os.sep)  # patches_s96/ (as a shell completes it) is still a name
    bare = name and Path(name).name == name and name not in (".", "..")
    return Path(params.data.root) / name if bare else Path(given)


class StopRequest:
    """Ctrl-C, or SIGTERM (what a batch scheduler sends before it stops a job: preemption, a time limit), sets a flag
    that the loop checks between steps, so a checkpoint is never taken mid-update; a second one stops at once, saying
    what to resume from (the newest checkpoint in the run's folder), except while the run writes its last checkpoints
    (:meth:`finishing`): a stop there would lose the one it is writing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, ckpt_dir: Path) -> None:
        self.requested = self._finishing = False
        self.signum: int | None = None  # the first signal received
        self.ckpt_dir = ckpt_dir
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def finishing(self) -> None:
        """From now on, Ctrl-C waits for the checkpoints being written."""
        self._finishing = True

    def close(self) -> None:
        """Give Ctrl-C and SIGTERM back to the handlers they had before the run (once its checkpoints are written)."""
        for s, previous in self._previous.items():
            signal.signal(s, previous)

    def _handle(self, signum, frame) -> None:
        if self._finishing:
            print("\nwriting the checkpoint; the run stops once it is whole", file=sys.stderr)
        if not self.requested or self._finishing:
            self.requested = True
            self.signum = self.signum or signum
            return
        saved = [p for p in (self.ckpt_dir / n for n in ("last.pth", "interrupted.pth")) if p.is_file()]
        if saved:
            newest = max(saved, key=lambda p: p.stat().st_mtime)
            stop = KeyboardInterrupt(f"stopped at once; resume with: python train.py --load {newest}")
        else:
            stop = KeyboardInterrupt(f"stopped at once, before this run saved a checkpoint; remove {self.ckpt_dir} "
                                     "and its TensorBoard folder to reuse the run's name")
        stop.exit_status = 128 + signum  # see lib.core.errors.cli_main: 130 for Ctrl-C, 143 for SIGTERM
        raise stop


@dataclass
class TrainingData:
    """The patches of a run on its device, split by source image, with the normalisation learnt from them."""

    folder: Path
    patches: PatchDataset
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    val_sources: list[str]
    normalization: dict
    images: torch.Tensor  # all patches on the device (74 MB for the published set): no loader, no copy per step
    masks: torch.Tensor
    image_stats: torch.Tensor | None  # per-patch source statistics on the device (``image`` normalisation)
    least_batch: int = 1  # the fewest patches a step may train on (BatchNorm; see lib.training.smallest_batch)


@dataclass
class Progress:
    """Where a run stands: epochs done, steps done in the current epoch and their loss sum, the best validation
    mIoU so far, one record per finished epoch, the steps of the whole run (TensorBoard's step of ``loss_iter``:
    it keeps rising when a resumed run changes its steps per epoch) and the rate of the epoch's first step (the
    epoch's ``lr``, which a run resumed mid-epoch with another schedule did not choose)."""

    epoch: int = 0
    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    best: float = -math.inf
    history: list[dict] = field(default_factory=list)
    steps_done: int | None = 0  # None: resumed from a checkpoint that did not count them (see train_epoch)
    epoch_rate: float | None = None


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resumed = load_checkpoint(args.load) if args.load else None
    params = resolve_params(args, resumed)
    t = params.training
    rt = Runtime.start(t.device, t.precision, args.amp)
    writer, checkpoints, stop = None, CheckpointWriter(), None
    try:
        if rt.device.type == "cpu":
            retain_freed_memory()
        if args.sync_bn and rt.device.type != "cuda":
            raise UserError(f"--sync-bn: SyncBatchNorm needs CUDA devices, this run is on {rt.device.type}")
        check_compiler(t.compile, rt.device)
        if args.deterministic:  # only when asked: the call imports torch._inductor, 1.7 s of every start on CPU
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
            torch.use_deterministic_algorithms(True)

        # ---- data, model, optimiser: every check happens before anything is written ----
        data = load_data(params, resumed, args, rt)
        params = with_patch_settings(params, data, rt)
        net, model = build_model(params, data.patches.n_channels, resumed, args, rt)
        check_deterministic(args.deterministic, rt.device, net.bilinear)
        step_model = compiled(model, t.compile, rt)
        loss_fn = make_loss(t.loss, t.class_weights, rt.device)
        optimizer = make_optimizer(net, params, rt)
        scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.precision == "fp16")
        progress = restore(resumed, optimizer, scaler, rt.dist.rank) if resumed else Progress()
        if progress.epoch >= t.epochs:
            asked = f"; -e {t.epochs} is not more than that" if args.epochs is not None else ""
            raise UserError(f"{args.load}: the run already finished {progress.epoch} epochs{asked} (pass -e with "
                            "more to extend)")

        # ---- outputs (rank 0 only) ----
        ckpt_root, runs_root = Path(t.checkpoints_dir), Path(t.runs_dir)
        if resumed:
            run, ckpt_dir, run_dir, branch = resumed_outputs(Path(args.load), resumed, args.name, ckpt_root, runs_root)
            check_resume_point(Path(args.load), resumed, None if branch else ckpt_dir / "last.pth", t.batch_size, rt)
            if branch:
                progress.best = -math.inf  # a new run's best.pth is the best of its own epochs, in its own folder
                # the new name taken once every check has passed, by the process that writes the run
                on_main(lambda: new_run_name("", run, ckpt_root, runs_root), rt.dist)
            if args.params and rt.dist.is_main:  # once every check has passed: an error stays one line
                note_ignored_params(args, params)
        else:
            # taken by the process that writes the run, and told to the others: a default name taken meanwhile
            # moves on to _2 there alone
            run = broadcast_from_main(on_main(lambda: new_run_name(str(data.folder), args.name, ckpt_root, runs_root),
                                              rt.dist), rt.dist)
            ckpt_dir, run_dir = ckpt_root / run, runs_root / run
        # as soon as the run has a folder: a Ctrl-C from here on stops at a step boundary with a checkpoint (raised
        # at once, it left an empty folder that the same --name then refused)
        stop = StopRequest(ckpt_dir)
        writer = on_main(lambda: open_outputs(ckpt_dir, run_dir, params, rt), rt.dist)
        if rt.dist.is_main:
            if args.amp and rt.device.type != "cuda":
                print(f"note: --amp applies on CUDA only; this run is on {rt.device.type} in {rt.precision} "
                      "(see --precision)", file=sys.stderr)
            if t.warmup_fraction and t.schedule != "cosine":
                print(f"note: training.warmup_fraction {t.warmup_fraction} applies to the cosine schedule only; this "
                      f"run keeps the {t.schedule} schedule (see --schedule)", file=sys.stderr)

        def save(name: str, *links: str) -> None:
            """``name`` written in the background (the next save or the end of the run waits for it), ``links``
            made the same file."""
            if rt.dist.is_main:
                state = build_checkpoint(net, params, data.normalization,
                                         training_entries(progress, optimizer, scaler, run, ckpt_dir, run_dir,
                                                          data, params, rt))
                checkpoints.save(state, ckpt_dir / name, [ckpt_dir / link for link in links])

        # ---- the loop ----
        if rt.dist.is_main:
            print(f"run {run}: {len(data.train_idx)} training / {len(data.val_idx)} validation patches from "
                  f"{data.folder}, U-Net width {params.model.base_channels} "
                  f"({sum(p.numel() for p in net.parameters()):,} parameters), {rt.device.type} {rt.precision}, "
                  f"{rt.dist.world_size} process(es), epochs {progress.epoch + 1}..{t.epochs}")
            if not len(data.val_idx):
                print(f"note: no validation images ({len(data.patches.source_names())} source image(s), "
                      f"training.val_fraction {t.val_fraction}): best.pth follows last.pth", file=sys.stderr)
        sampler = DistributedSampler(range(len(data.train_idx)), num_replicas=rt.dist.world_size,
                                     rank=rt.dist.rank, shuffle=True, seed=t.seed)
        figure_idx = data.val_idx[torch.linspace(0, len(data.val_idx) - 1, min(t.figure_patches, len(data.val_idx))
                                                 ).long()] if len(data.val_idx) else data.val_idx
        model.train()
        for epoch in range(progress.epoch, t.epochs):
            sampler.set_epoch(epoch)
            # the epoch's order on the device: a batch's indices copied from the host each step would block on it
            order = data.train_idx[torch.tensor(list(sampler), dtype=torch.long)].to(rt.device)
            steps = list(batches(order, t.batch_size, data.least_batch))  # a lone last patch may join the one before

            def rate(step: int, epoch: int = epoch, n: int = len(steps)) -> float:
                # a function of where the run stands alone: a resumed run follows its (possibly overridden) schedule
                return t.learning_rate * schedule_factor(t.schedule, epoch, step, n, t.epochs, t.lr_final_factor,
                                                         t.warmup_fraction)

            tic = time.perf_counter()
            outcome = train_epoch(step_model, loss_fn, optimizer, scaler, data, steps, rate, progress, rt, stop,
                                  writer, f"epoch {epoch + 1}/{t.epochs}")
            if outcome == "stopped":
                gather_epoch_loss(progress, rt)
                on_main(lambda: save("interrupted.pth"), rt.dist)  # (it raises an earlier write's failure)
                return interrupted(ckpt_dir, progress, rt, stop, checkpoints)
            if outcome == "non-finite":
                if rt.dist.is_main:
                    checkpoints.wait()
                    last = ckpt_dir / "last.pth"
                    kept = f"The last good checkpoint is {last}" if last.is_file() else "No checkpoint was written"
                    print(f"error: non-finite loss at epoch {epoch + 1}, step {progress.step + 1}; stopped. {kept} "
                          "(try a lower learning rate)", file=sys.stderr)
                return EXIT_NONFINITE
            rates = (progress.epoch_rate, rate(max(len(steps) - 1, 0)))  # the first and last step's
            record, improved = end_epoch(model, loss_fn, data, params, progress, rt, rates, time.perf_counter() - tic)

            def write_epoch(record: dict = record, improved: bool = improved) -> None:
                save("last.pth", *(["best.pth"] if improved else []))  # first: TensorBoard's disk may be full
                log_epoch(writer, record, data, figure_idx, model, params, rt)
                tqdm.write(summary_line(record, t.epochs, params.class_names), file=sys.stdout)
                writer.raise_error()  # a TensorBoard write that failed in the epoch, now that it is saved

            # its failure (that, or the previous checkpoint's write, raised by this save) ends every process
            on_main(write_epoch, rt.dist)
            if broadcast_flag(stop.requested, rt.dist, rt.device) and epoch + 1 < t.epochs:
                on_main(lambda: save("interrupted.pth"), rt.dist)
                return interrupted(ckpt_dir, progress, rt, stop, checkpoints)

        def finish() -> None:
            log_hparams(writer, params, progress, rt, data.folder)
            writer.flush()
            writer.raise_error()
            checkpoints.wait()  # the last checkpoint on disk (or its failure said) before "done"

        stop.finishing()  # a Ctrl-C now waits: raised on rank 0 alone, it left the others in on_main's exchange
        on_main(finish, rt.dist)  # a failure of the last writes ends every process with it
        if writer:
            print(f"done: checkpoints in {ckpt_dir}, TensorBoard events in {run_dir}")
        return 0
    finally:
        try:
            if stop is not None:
                stop.finishing()  # a Ctrl-C now would cut the checkpoint being written short
            checkpoints.wait()  # the last checkpoint is on disk before the run ends, however it ends
        finally:
            if stop is not None:
                stop.close()
            if writer:
                writer.close()
                if writer.error is not None and not writer.reported:  # a run stopped by Ctrl-C, or diverged
                    print(f"note: TensorBoard's records of this run stop where a write failed: {writer.error}",
                          file=sys.stderr)
            cleanup(rt.dist)


def load_data(params: Params, resumed: dict | None, args: argparse.Namespace, rt: Runtime) -> TrainingData:
    """The patch folder read, split by source image and checked against a resumed checkpoint; the normalisation
    learnt from the training patches (or the resumed run's); all of it on the device.

    Raises:
        UserError: a missing or malformed folder, a batch or training set that cannot train
            (:func:`check_batches`), or a checkpoint that does not fit the patches.
    """
    t = params.training
    folder = patch_folder(params)
    patches = PatchDataset(folder, params.class_colors)
    train_sources, val_sources = split_sources(patches.source_names(), t.val_fraction, t.seed)
    train_idx, val_idx = patches.subset_indices(train_sources), patches.subset_indices(val_sources)
    least = check_batches(folder, patches.images.shape[-1], len(train_idx), t.batch_size, rt.dist.world_size,
                          args.sync_bn)
    if resumed:
        classes = load_params(args.params).n_classes if args.params else params.n_classes
        check_compatible(resumed, patches.n_channels, classes, args.load, patches.dtype,
                         args.params or "parameters.json")
        check_resumable(resumed, args.load)
        if sorted(val_sources) != sorted(resumed["val_sources"]):  # it would validate on images it trained on
            raise UserError(f"{folder}: its validation images would be {_names(val_sources)}, but {args.load} "
                            f"validated on {_names(resumed['val_sources'])}; resume with the run's patch folder, "
                            f"{resumed['patch_folder']} (--load continues a run on its own images; fine-tuning on "
                            "other data is not supported)")
    normalization = resumed["normalization"] if resumed else compute_normalization(
        patches.images[train_idx], params.data.normalization, params.data.percentiles)
    image_stats = patch_image_stats(patches, normalization)
    return TrainingData(folder, patches, train_idx, val_idx, val_sources, normalization,
                        move_pixels(patches.images, rt.device), patches.masks.to(rt.device),
                        image_stats.to(rt.device) if image_stats is not None else None, least)


def check_batches(folder: Path, size: int, n_train: int, batch_size: int, processes: int, sync_bn: bool) -> int:
    """The fewest patches a step may train on (:func:`lib.training.smallest_batch`; one where SyncBatchNorm takes its
    statistics over the batches of several processes).

    Raises:
        UserError: the batch is larger than the training set or smaller than that least, or the training set leaves
            a process fewer patches than that least (DistributedSampler's share, rounded up).
    """
    least = 1 if sync_bn and processes > 1 else smallest_batch(size)
    share = -(-n_train // processes)
    if share < least:
        over = f" over {processes} processes" if processes > 1 else ""
        raise UserError(f"{folder}: {n_train} training patch(es) of {size}x{size}{over} leave {share} a step, and "
                        "BatchNorm cannot train on one value per channel at the U-Net's 1x1 bottom level; cut more "
                        "patches, or patches of 32 or more")
    if batch_size > n_train:
        raise UserError(f"--batch-size {batch_size}: larger than the training set ({n_train} patches)")
    if batch_size < least:
        raise UserError(f"--batch-size {batch_size}: with patches of {size}x{size} the U-Net's bottom level is 1x1, "
                        f"and BatchNorm cannot train on one value per channel; use a batch of {least} or more, or "
                        "patches of 32 or more")
    return least


def _names(sources: list[str], shown: int = 3) -> str:
    """``a, b, c and 4 more``: a short list of source image names for a message."""
    head = ", ".join(sorted(sources)[:shown]) or "none"
    return head + (f" and {len(sources) - shown} more" if len(sources) > shown else "")


def with_patch_settings(params: Params, data: TrainingData, rt: Runtime) -> Params:
    """``params`` with ``patches`` as the folder's patches were cut, so that the checkpoint records how its patches were
    cut from their source images (it kept parameters.json's ``per_image``, ``seed`` and sampling, not those of
    ``lib.prepare``'s flags): the settings of the job that wrote the folder, and ``size`` the side of its patches,
    which predict.py slides as its window (a note where it differs from the parameters file's)."""
    size = data.patches.images.shape[-1]
    made = (data.patches.cut_with or {}).get("patches")
    names = {f.name for f in fields(params.patches)}
    cut = {k: v for k, v in made.items() if k in names} if isinstance(made, dict) else {}
    cut["size"] = size
    if size != params.patches.size and rt.dist.is_main:
        print(f"note: {data.folder} holds patches of {size}x{size}, not patches.size {params.patches.size}: the "
              f"checkpoint records {size}, the window predict.py will slide", file=sys.stderr)
    changed = {k: v for k, v in cut.items() if getattr(params.patches, k) != v}
    try:
        return replace(params, "patches", **changed) if changed else params
    except UserError:  # a marker edited by hand: the size alone, as before
        return replace(params, "patches", size=size)


def build_model(params: Params, n_channels: int, resumed: dict | None, args: argparse.Namespace, rt: Runtime
                ) -> tuple[UNet, torch.nn.Module]:
    """The U-Net (seeded, or the resumed run's weights) on the device, and the module to train: the U-Net itself,
    or its DistributedDataParallel wrapper under torchrun."""
    torch.manual_seed(params.training.seed)
    net = UNet(n_channels, params.n_classes, params.model.base_channels, params.model.bilinear)
    if resumed:
        if resumed["model_config"] != net.config():
            raise UserError(f"{args.load}: checkpoint model {resumed['model_config']} does not match {net.config()}")
        load_weights(net, resumed["model_state"], args.load)
    net.to(rt.device, memory_format=rt.memory_format)
    if not rt.dist.enabled:
        return net, net
    if args.sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net, DistributedDataParallel(net, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)


def make_optimizer(net: torch.nn.Module, params: Params, rt: Runtime) -> torch.optim.Optimizer:
    """``sgd``: SGD (the published optimiser) with ``training.momentum`` and ``training.weight_decay``; ``adamw``:
    AdamW with the same weight decay (decoupled) and its default betas (``training.momentum`` is SGD's alone). On
    CUDA either runs its fused kernel, which updates all parameters in a few launches instead of a few per
    parameter."""
    t, fused = params.training, rt.device.type == "cuda"
    if t.optimizer == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=t.learning_rate, weight_decay=t.weight_decay, fused=fused)
    return torch.optim.SGD(net.parameters(), lr=t.learning_rate, momentum=t.momentum, weight_decay=t.weight_decay,
                           fused=fused)


def check_deterministic(deterministic: bool, device: torch.device, bilinear: bool) -> None:
    """Refuse ``--deterministic`` where the model has an operation without a deterministic kernel: the backward of
    bilinear upsampling on CUDA (``model.bilinear``), which would raise mid-training.

    Raises:
        UserError: naming the flag, the setting and the ways out.
    """
    if deterministic and bilinear and device.type == "cuda":
        raise UserError("--deterministic: the bilinear upsampling of this model (model.bilinear true) has no "
                        "deterministic backward on CUDA; use model.bilinear false (the default) or --device cpu")


def check_compiler(mode: str, device: torch.device) -> None:
    """Refuse ``--compile`` where it cannot run, before any data are read.

    Raises:
        UserError: compiling on CPU without a C++ compiler (inductor builds its CPU kernels with one).
    """
    if mode != "off" and device.type == "cpu" and not any(
            shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        raise UserError(f"--compile {mode}: torch.compile on CPU needs a C++ compiler (g++ or clang++); none found")


def compiled(model: torch.nn.Module, mode: str, rt: Runtime) -> torch.nn.Module:
    """The module the training steps run: ``model`` itself, or ``torch.compile(model, mode=mode)``. Evaluation keeps
    the eager module (other batch sizes and eval-mode batch norm would each compile anew).

    Raises:
        UserError: see :func:`check_compiler`.
    """
    if mode == "off":
        return model
    check_compiler(mode, rt.device)
    return torch.compile(model, mode=None if mode == "default" else mode)


def restore(resumed: dict, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, rank: int = 0
            ) -> Progress:
    """Optimiser, gradient scaler and random state of a resumed run, and where it stood. The epoch's loss so far
    (summed over the processes that saved it, see :func:`gather_epoch_loss`) goes to rank 0 alone, so that the
    epoch's sum over processes counts it once."""
    fused = [group["fused"] for group in optimizer.param_groups]
    optimizer.load_state_dict(resumed["optimizer_state"])
    for group, flag in zip(optimizer.param_groups, fused):  # the saved flag is that of the device it was saved on
        group["fused"] = flag
    if resumed["scaler_state"]:  # empty where the run was not in fp16: a resume in fp16 starts a fresh scaler
        scaler.load_state_dict(resumed["scaler_state"])
    torch.set_rng_state(resumed["rng"]["torch"])
    loss_sum, loss_count = resumed["epoch_loss"] if rank == 0 else (0.0, 0)
    return Progress(resumed["epoch"], resumed["step_in_epoch"], loss_sum, int(loss_count), resumed["best_miou"],
                    list(resumed["history"]), resumed.get("steps_done"), resumed.get("epoch_rate"))


def training_entries(progress: Progress, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, run: str,
                     ckpt_dir: Path, run_dir: Path, data: TrainingData, params: Params, rt: Runtime) -> dict:
    """The resume state of a checkpoint (model.checkpoint.RESUME_KEYS), taken at a step boundary."""
    return {"epoch": progress.epoch, "step_in_epoch": progress.step,
            "epoch_loss": [progress.loss_sum, progress.loss_count], "steps_done": progress.steps_done,
            "epoch_rate": progress.epoch_rate, "optimizer_state": optimizer.state_dict(),
            "scaler_state": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()}, "best_miou": progress.best,
            "history": progress.history, "run_name": run, "checkpoint_dir": str(ckpt_dir.resolve()),
            "run_dir": str(run_dir.resolve()),
            "patch_folder": str(data.folder),
            "val_sources": data.val_sources, "seed": params.training.seed, "precision": rt.precision,
            "world_size": rt.dist.world_size, "git_commit": git_commit(), "versions": versions()}


def resumed_outputs(load: Path, resumed: dict, name: str | None, ckpt_root: Path, runs_root: Path
                    ) -> tuple[str, Path, Path, bool]:
    """Where a resumed run writes: ``(run name, checkpoint folder, TensorBoard folder, whether it is a new run)``.

    With ``--name NEW`` (not the run's name) it is a new run that goes on from the checkpoint, in ``checkpoints/NEW``
    and ``runs/NEW`` (neither may exist). Otherwise the run goes on where it is: in the loaded checkpoint's folder
    (wherever the run was moved) and the TensorBoard folder it recorded (``runs/<run>`` for a checkpoint that recorded
    none, or whose folder's parent is gone, as on another machine). A new name is checked for form here and taken
    by :func:`new_run_name` once every check has passed.

    Raises:
        UserError: a new name that is not a plain folder name, or a copy of a run whose own folder is still in use
            (going on from the copy would mix two runs' events in one TensorBoard folder).
    """
    if name not in (None, resumed["run_name"]):
        run = new_run_name("", name, ckpt_root, runs_root, claim=False)
        return run, ckpt_root / run, runs_root / run, True
    run, folder, home = resumed["run_name"], load.resolve().parent, resumed.get("checkpoint_dir")
    if home and Path(home).is_dir() and not os.path.samefile(home, folder) and any(
            (Path(home) / n).is_file() for n in CHECKPOINT_NAMES):
        raise UserError(f"{load}: saved by run {run} of {home}, which has checkpoints (this folder is a copy, or was "
                        "renamed, and both would write to one TensorBoard folder); resume it there, or pass --name NEW "
                        "to go on from this checkpoint as a new run")
    recorded = Path(resumed.get("run_dir") or runs_root / run)
    return run, folder, recorded if recorded.parent.is_dir() else runs_root / run, False


def check_resume_point(load: Path, resumed: dict, last: Path | None, batch_size: int, rt: Runtime) -> None:
    """Refuse to resume from behind the ``last`` of the run's folder (an ``interrupted.pth`` the run has since gone
    past, an earlier ``best.pth``): the resumed run would replace it, and ``best.pth``, with older states (a new run,
    ``last`` None, replaces nothing). And a checkpoint saved mid-epoch goes on with the batch size and the number of
    processes that saved it: its step counts their batches (with others, patches of the epoch would be skipped).

    Raises:
        UserError: naming both checkpoints and where each stands, or the batch sizes or process counts.
    """
    epoch, step, saved_by = resumed["epoch"], resumed["step_in_epoch"], resumed["world_size"]
    saved_batch = checkpoint_params(resumed, load).training.batch_size  # (-b overrides the run's parameters)
    # first: a checkpoint the run has gone past is not to be resumed at all, with whatever batch size
    if last is not None and last.is_file() and not os.path.samefile(last, load):
        there = load_checkpoint(last)
        if (there["epoch"], there["step_in_epoch"]) > (epoch, step):
            raise UserError(f"{load}: {last} is further on (epoch {there['epoch']} done, step "
                            f"{there['step_in_epoch']}; this one: epoch {epoch} done, step {step}) and resuming here "
                            f"would replace it; resume {last.name}, or pass --name NEW to go on from {load.name} as a "
                            "new run")
    if step and (saved_by, saved_batch) != (rt.dist.world_size, batch_size):
        raise UserError(f"{load}: saved at step {step} of epoch {epoch + 1} by {saved_by} process(es) with batch size "
                        f"{saved_batch}, whose batches its step counts; resume it with -b {saved_batch} on "
                        f"{saved_by} process(es), or resume an end-of-epoch checkpoint (last.pth) with any")


def gather_epoch_loss(progress: Progress, rt: Runtime) -> None:
    """The epoch's loss so far summed over processes, as a mid-epoch checkpoint keeps it (see :func:`restore`)."""
    totals = all_reduce_sum(torch.tensor([progress.loss_sum, progress.loss_count], dtype=torch.float64,
                                         device=rt.device), rt.dist)
    progress.loss_sum, progress.loss_count = float(totals[0]), int(totals[1])


def open_outputs(ckpt_dir: Path, run_dir: Path, params: Params, rt: Runtime) -> EventWriter:
    """The run's checkpoint folder, and its TensorBoard writer with the run's configuration as text (written at
    once, so a full disk is found here). A run that cannot open them gives its name back: the folders it made are
    removed (an empty checkpoint folder, or a runs folder, would hold the name as a run that saved nothing)."""
    make_folder(ckpt_dir)
    for name in CHECKPOINT_NAMES:  # a killed run's temporary files: they hold disk space
        remove_stale_temporaries(ckpt_dir / name)
    made_run_dir, writer = not run_dir.exists(), None
    try:
        make_folder(run_dir)
        writer = EventWriter(run_dir)
        writer.add_text("run/config", f"seed {params.training.seed}, git {git_commit()}, {versions()}, precision "
                        f"{rt.precision}, processes {rt.dist.world_size}, parameters: {params.to_dict()}", 0)
        writer.flush()
        writer.raise_error()
    except UserError:
        if writer is not None:
            writer.close()
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            ckpt_dir.rmdir()  # only if empty: a resumed run's checkpoints stay
        raise
    return writer


def readout_interval(device: torch.device) -> int:
    """Steps between reads of the loss on the host. A read waits for the device to finish the queued work; on a GPU
    that leaves it idle while the next step is launched, so the losses of 32 steps are read at once. On CPU the loss
    is computed by then anyway: every step."""
    return 32 if device.type == "cuda" else 1


def train_epoch(model: torch.nn.Module, loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler, data: TrainingData, steps: list[torch.Tensor],
                rate: Callable[[int], float], progress: Progress, rt: Runtime, stop: StopRequest, writer,
                desc: str) -> str:
    """The steps of one epoch from ``progress.step`` on, step ``k`` at the learning rate ``rate(k)``. Every
    :func:`readout_interval` steps, and at the end, the losses are read (:func:`read_losses`): ``progress`` is
    updated, the losses logged, and a stop request or a non-finite loss acted on.

    Returns:
        ``"done"``, ``"stopped"`` (Ctrl-C on any process, at a step boundary) or ``"non-finite"`` (a NaN or infinite
        loss on any process; on a GPU up to 31 later updates have run in memory, and none of them is ever saved).
    """
    bar = tqdm(total=len(steps), initial=progress.step, desc=desc, disable=not rt.dist.is_main, leave=False,
               unit="step", file=sys.stdout)
    every, pending = readout_interval(rt.device), []
    if progress.steps_done is None:  # an older checkpoint: counted as if every epoch had had this epoch's steps
        progress.steps_done = progress.epoch * len(steps) + progress.step
    if progress.step == 0 or progress.epoch_rate is None:  # (None: an older checkpoint, saved mid-epoch)
        progress.epoch_rate = rate(0)
    try:
        for step in range(progress.step, len(steps)):
            set_rate(optimizer, rate(step))
            _, _, loss = forward_loss(model, loss_fn, data.images, data.masks, steps[step], data.normalization, rt,
                                      data.image_stats)
            optimizer_step(loss, optimizer, scaler)
            pending.append(loss.detach())
            if len(pending) == every or step + 1 == len(steps):
                outcome = read_losses(pending, progress, rt, stop, writer, bar)
                pending = []
                if outcome != "running":
                    return outcome
    finally:
        bar.close()
    return "done"


def read_losses(pending: list[torch.Tensor], progress: Progress, rt: Runtime, stop: StopRequest, writer, bar
                ) -> str:
    """Read the losses of the steps since the last read (one host sync), add them to ``progress`` up to the first
    non-finite one, log them per step, and consult every process on a non-finite loss and on a stop request.

    Returns:
        ``"running"``, ``"non-finite"`` (``progress.step`` is then the step of the first non-finite loss) or
        ``"stopped"``.
    """
    values = torch.stack(pending).tolist() if len(pending) > 1 else [pending[0].item()]
    bad = next((k for k, v in enumerate(values) if not math.isfinite(v)), None)
    for value in values[:bad]:
        if writer:
            writer.add_scalar("train/loss_iter", value, progress.steps_done)
        progress.step, progress.loss_sum, progress.loss_count = progress.step + 1, progress.loss_sum + value, \
            progress.loss_count + 1
        progress.steps_done += 1
    bar.update(len(values[:bad]))
    if broadcast_flag(bad is not None, rt.dist, rt.device):
        return "non-finite"
    bar.set_postfix(loss=f"{values[-1]:.4f}")
    return "stopped" if broadcast_flag(stop.requested, rt.dist, rt.device) else "running"


def end_epoch(model: torch.nn.Module, loss_fn: torch.nn.Module, data: TrainingData, params: Params,
              progress: Progress, rt: Runtime, rates: tuple[float, float], seconds: float) -> tuple[dict, bool]:
    """Close an epoch: the training loss reduced over processes, the validation loss and IoU; ``progress`` moves
    to the next epoch with the record appended. ``rates``: the learning rates of the epoch's first and last step
    (``lr`` and ``lr_end`` of the record; they differ with a per-step schedule).

    Returns:
        ``(record, improved)``: the epoch's record, and whether its validation mIoU is the best so far (always
        without validation images, so that ``best.pth`` is then the last model rather than missing).
    """
    gather_epoch_loss(progress, rt)
    record = {"epoch": progress.epoch + 1, "train_loss": progress.loss_sum / max(progress.loss_count, 1),
              "lr": rates[0], "lr_end": rates[1], "seconds": seconds}
    if len(data.val_idx):
        val_loss, cm = evaluate(model, data.images, data.masks, data.val_idx, data.normalization, loss_fn,
                                params.n_classes, rt, image_stats=data.image_stats)
        record.update(val_loss=val_loss, val_miou=mean_iou(cm),
                      val_iou={n: float(v) for n, v in zip(params.class_names, iou_per_class(cm))})
    progress.history.append(record)
    improved = record.get("val_miou", -math.inf) > progress.best or not len(data.val_idx)
    progress.best = max(progress.best, record.get("val_miou", -math.inf))
    progress.epoch, progress.step, progress.loss_sum, progress.loss_count = progress.epoch + 1, 0, 0.0, 0
    return record, improved


def interrupted(ckpt_dir: Path, progress: Progress, rt: Runtime, stop: StopRequest,
                checkpoints: CheckpointWriter) -> int:
    """Ctrl-C or SIGTERM: ``interrupted.pth``, saved at a step boundary, is written whole (a second signal waits for
    it); then say how to resume from it. The exit status is 128 + the signal's number, as a shell reports a command
    the signal stopped (130 for Ctrl-C, 143 for SIGTERM)."""
    stop.finishing()
    # every process stops with the signal one of them got (the others learnt of the stop, not of its signal)
    signum = all_reduce_max(stop.signum or signal.SIGINT, rt.dist, rt.device)
    by = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    if rt.dist.is_main:
        checkpoints.wait()
        n = rt.dist.world_size  # a checkpoint saved mid-epoch goes on with the processes that saved it
        command = f"torchrun --nproc_per_node {n} train.py" if n > 1 else "python train.py"
        print(f"\ninterrupted ({by}) at epoch {progress.epoch + 1}, step {progress.step}; resume with: "
              f"{command} --load {ckpt_dir / 'interrupted.pth'}", file=sys.stderr)
    return 128 + signum


def log_hparams(writer, params: Params, progress: Progress, rt: Runtime, folder: Path) -> None:
    """The run's hyper-parameters and final metrics, for TensorBoard's HParams view."""
    t, final = params.training, progress.history[-1]
    writer.add_hparams(
        {"learning_rate": t.learning_rate, "batch_size": t.batch_size, "epochs": t.epochs,
         "base_channels": params.model.base_channels, "bilinear": params.model.bilinear, "loss": t.loss,
         "precision": rt.precision, "seed": t.seed, "processes": rt.dist.world_size, "folder": str(folder)},
        {"hparam/val_miou": final.get("val_miou", float("nan")),
         "hparam/best_val_miou": progress.best if math.isfinite(progress.best) else float("nan"),  # no validation
         "hparam/val_loss": final.get("val_loss", float("nan")), "hparam/train_loss": final["train_loss"]},
        run_name=".")


def patch_image_stats(data: PatchDataset, normalization: dict) -> torch.Tensor | None:
    """The source-image statistics of every patch, where the normalisation works per image (else None).

    Raises:
        UserError: the patch folder has no ``sources.json`` (written by preparation since the modes exist).
    """
    if as_spec(normalization)["mode"] != "image":
        return None
    if data.image_stats is None:
        raise UserError(f"{data.folder / SOURCES}: not found; normalisation 'image' needs the statistics of each "
                        "source image (rerun python -m lib.prepare --overwrite)")
    return data.image_stats


def log_epoch(writer, record: dict, data: TrainingData, figure_idx: torch.Tensor, model: torch.nn.Module,
              params: Params, rt: Runtime) -> None:
    """Per-epoch scalars, and a figure of a few validation patches (image, truth, prediction)."""
    e = record["epoch"]
    writer.add_scalar("train/loss", record["train_loss"], e)
    writer.add_scalar("train/lr", record["lr"], e)
    if "val_miou" in record:
        writer.add_scalar("val/loss", record["val_loss"], e)
        writer.add_scalar("val/miou", record["val_miou"], e)
        for name, value in record["val_iou"].items():
            writer.add_scalar(f"val/iou_{name}", value, e)
    if len(figure_idx):
        from lib.core.visualize import validation_panel

        labels = predict_labels(model, data.images, figure_idx, data.normalization, rt, data.image_stats)
        images = data.patches.images[figure_idx].permute(0, 2, 3, 1).squeeze(-1).numpy()
        panel = validation_panel(images, data.patches.masks[figure_idx].numpy(), labels.numpy(), params.class_colors)
        writer.add_image("val/examples", panel, e, dataformats="HWC")  # columns: image, ground truth, prediction
    writer.flush()


def summary_line(record: dict, epochs: int, names: list[str]) -> str:
    line = f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}"
    if "val_miou" in record:
        ious = " ".join(f"{n} {record['val_iou'][n]:.3f}" for n in names)
        line += f"  val loss {record['val_loss']:.4f}  val mIoU {record['val_miou']:.4f} ({ious})"
    # a per-step schedule (cosine) moves the rate within the epoch: its first rate alone misled (2e-3 in warm-up)
    end = record.get("lr_end", record["lr"])
    rate = f"{record['lr']:.2e}" + (f" to {end:.2e}" if end != record["lr"] else "")
    return line + f"  lr {rate}  {record['seconds']:.1f}s"


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as stop:  # a UserError leaves main() through cli_main's sys.exit(2)
        status = stop.code
    exit_process(status)
