"""Train the U-Net on a folder of patches.

    python train.py -e 100 -l 0.01 -b 16 -f patches_s96            # the published configuration (GPU)
    python train.py --load checkpoints/<run>/last.pth               # resume a run where it stopped
    torchrun --nproc_per_node=N train.py ...                        # several processes (DDP)

Defaults come from parameters.json; flags override them. Writes TensorBoard events to ``runs/<run>/`` and
checkpoints (``last.pth`` every epoch, ``best.pth`` at the best validation mIoU) to ``checkpoints/<run>/``.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from dataloader.patches import SOURCES, PatchDataset, split_sources
from lib.allocator import retain_freed_memory
from lib.atomic import make_folder
from lib.device import memory_format, resolve_precision, select_device
from lib.distributed import DistInfo, all_reduce_sum, broadcast_flag, cleanup, exit_process, init_distributed
from lib.errors import UserError, cli_main
from lib.losses import make_loss
from lib.metrics import iou_per_class, mean_iou
from lib.normalization import as_spec, compute_normalization
from lib.params import Params, load_params, params_from_dict, replace
from lib.provenance import git_commit, versions
from lib.schedule import lr_factor, make_scheduler
from lib.training import batches, evaluate, forward_loss, new_run_name, optimizer_step, predict_labels
from model.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from model.unet_model import UNet

EXIT_INTERRUPTED, EXIT_NONFINITE = 130, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-e", "--epochs", type=int, help="number of epochs (training.epochs)")
    p.add_argument("-l", "--learning-rate", type=float, help="base learning rate (training.learning_rate)")
    p.add_argument("-b", "--batch-size", type=int, help="patches per step and process (training.batch_size)")
    p.add_argument("-f", "--folder", help="patch folder under data/, or a path (training.folder)")
    p.add_argument("--load", metavar="CKPT", help="resume the run of this checkpoint")
    p.add_argument("--params", metavar="FILE", help="parameters file (default: parameters.json)")
    p.add_argument("--seed", type=int, help="seed of initialisation, split and shuffling (training.seed)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="training.device")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"], help="training.precision")
    p.add_argument("--amp", action="store_true", help="mixed precision on CUDA (bf16 where supported, else fp16)")
    p.add_argument("--val-fraction", type=float, help="fraction of source images held out (training.val_fraction)")
    p.add_argument("--base-channels", type=int, help="U-Net width (model.base_channels)")
    p.add_argument("--bilinear", action=argparse.BooleanOptionalAction, default=None, help="model.bilinear")
    p.add_argument("--loss", choices=["ce", "dice_ce"], help="training.loss")
    p.add_argument("--name", help="run name (default: <folder>_<date-time>)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP only)")
    p.add_argument("--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)")
    return p.parse_args(argv)


def resolve_params(args: argparse.Namespace, resumed: dict | None) -> Params:
    """parameters.json (or, when resuming, the parameters the run was started with), overridden by the flags."""
    params = params_from_dict(resumed["params"]) if resumed else load_params(args.params)
    if resumed and args.params:  # resuming keeps the run's parameters; the classes must agree with the user's file
        theirs = load_params(args.params)
        if theirs.n_classes != params.n_classes:
            raise UserError(f"{args.load}: checkpoint was trained for {params.n_classes} classes, "
                            f"{args.params} has {theirs.n_classes}")
    params = replace(params, "training", epochs=args.epochs, learning_rate=args.learning_rate,
                     batch_size=args.batch_size, folder=args.folder, seed=args.seed, device=args.device,
                     precision=args.precision, val_fraction=args.val_fraction, loss=args.loss)
    return replace(params, "model", base_channels=args.base_channels, bilinear=args.bilinear)


def patch_folder(params: Params) -> Path:
    folder = Path(params.training.folder)
    return folder if folder.is_absolute() or folder.parts[0] in (".", "..") else Path(params.data.root) / folder


class StopRequest:
    """Ctrl-C sets a flag that the loop checks between steps, so a checkpoint is never taken mid-update."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)  # a second Ctrl-C stops at once


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    resumed = load_checkpoint(args.load) if args.load else None
    params = resolve_params(args, resumed)
    t = params.training
    device = select_device(t.device)
    info: DistInfo = init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    precision = resolve_precision(t.precision, device, args.amp)
    mem = memory_format(device)
    if device.type == "cpu":
        retain_freed_memory()
    if args.sync_bn and device.type != "cuda":
        raise UserError(f"--sync-bn: SyncBatchNorm needs CUDA devices, this run is on {device.type}")
    torch.use_deterministic_algorithms(args.deterministic)

    # ---- data: every check happens before anything is written ----
    folder = patch_folder(params)
    data = PatchDataset(folder, params.class_colors)
    train_sources, val_sources = split_sources(data.source_names(), t.val_fraction, t.seed)
    train_idx, val_idx = data.subset_indices(train_sources), data.subset_indices(val_sources)
    if t.batch_size > len(train_idx):
        raise UserError(f"--batch-size {t.batch_size}: larger than the training set ({len(train_idx)} patches)")
    if resumed:
        check_compatible(resumed, data.n_channels, params.n_classes, args.load, data.dtype)
    normalization = resumed["normalization"] if resumed else compute_normalization(
        data.images[train_idx], params.data.normalization, params.data.percentiles)
    image_stats = patch_image_stats(data, normalization)
    # all patches live on the device (74 MB for the published set): no loader, no copy per step on a GPU
    images, masks = data.images.to(device), data.masks.to(device)
    device_stats = image_stats.to(device) if image_stats is not None else None

    # ---- model, loss, optimiser, schedule ----
    torch.manual_seed(t.seed)
    net = UNet(data.n_channels, params.n_classes, params.model.base_channels, params.model.bilinear)
    if resumed:
        if resumed["model_config"] != net.config():
            raise UserError(f"{args.load}: checkpoint model {resumed['model_config']} does not match {net.config()}")
        net.load_state_dict(resumed["model_state"])
    net.to(device, memory_format=mem)
    if args.sync_bn and info.enabled:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else net
    loss_fn = make_loss(t.loss, t.class_weights, device)
    optimizer = torch.optim.SGD(net.parameters(), lr=t.learning_rate, momentum=t.momentum,
                                weight_decay=t.weight_decay)
    scheduler = make_scheduler(optimizer, t.epochs, t.lr_final_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    start_epoch, start_step, best, history = 0, 0, -math.inf, []
    carried = (0.0, 0)  # loss sum and step count of a partly done epoch
    if resumed:
        optimizer.load_state_dict(resumed["optimizer_state"])
        scheduler.load_state_dict(resumed["scheduler_state"])
        scaler.load_state_dict(resumed["scaler_state"])
        torch.set_rng_state(resumed["rng"]["torch"])
        start_epoch, start_step, best = resumed["epoch"], resumed["step_in_epoch"], resumed["best_miou"]
        history, carried = list(resumed["history"]), tuple(resumed["epoch_loss"])
        # the schedule follows the (possibly overridden) epochs and base rate
        scheduler.base_lrs = [t.learning_rate for _ in optimizer.param_groups]
        for group in optimizer.param_groups:
            group["initial_lr"] = t.learning_rate
            group["lr"] = t.learning_rate * lr_factor(min(start_epoch, t.epochs - 1), t.epochs, t.lr_final_factor)
    if start_epoch >= t.epochs:
        raise UserError(f"{args.load}: the run already finished its {t.epochs} epochs (pass -e with more to extend)")

    # ---- outputs (rank 0 only) ----
    ckpt_root, runs_root = Path(t.checkpoints_dir), Path(t.runs_dir)
    run = resumed["run_name"] if resumed else new_run_name(str(folder), args.name, ckpt_root, runs_root)
    ckpt_dir, run_dir = ckpt_root / run, runs_root / run
    writer = None
    if info.is_main:
        from torch.utils.tensorboard import SummaryWriter

        make_folder(ckpt_dir)
        make_folder(run_dir)
        writer = SummaryWriter(str(run_dir))
        writer.add_text("run/config", f"seed {t.seed}, git {git_commit()}, {versions()}, precision {precision}, "
                        f"processes {info.world_size}, parameters: {params.to_dict()}", 0)
    figure_idx = val_idx[torch.linspace(0, len(val_idx) - 1, min(t.figure_patches, len(val_idx))).long()] \
        if len(val_idx) else val_idx

    def checkpoint(epoch: int, step: int, loss_sum: float, loss_count: int) -> dict:
        return {
            "model_state": {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()},
            "model_config": net.config(), "class_names": params.class_names,
            "class_colors": [list(c) for c in params.class_colors], "normalization": normalization,
            "params": params.to_dict(), "epoch": epoch, "step_in_epoch": step, "epoch_loss": [loss_sum, loss_count],
            "optimizer_state": optimizer.state_dict(), "scheduler_state": scheduler.state_dict(),
            "scaler_state": scaler.state_dict(), "rng": {"torch": torch.get_rng_state()}, "best_miou": best,
            "history": history, "run_name": run, "patch_folder": str(folder), "val_sources": val_sources,
            "seed": t.seed, "precision": precision, "world_size": info.world_size, "git_commit": git_commit(),
            "versions": versions(),
        }

    stop = StopRequest()  # before the first line, so a Ctrl-C from here on is handled
    if info.is_main:
        print(f"run {run}: {len(train_idx)} training / {len(val_idx)} validation patches from {folder}, "
              f"U-Net width {params.model.base_channels} ({sum(p.numel() for p in net.parameters()):,} parameters), "
              f"{device.type} {precision}, {info.world_size} process(es), epochs {start_epoch + 1}..{t.epochs}")
    sampler = DistributedSampler(range(len(train_idx)), num_replicas=info.world_size, rank=info.rank,
                                 shuffle=True, seed=t.seed)
    model.train()
    for epoch in range(start_epoch, t.epochs):
        sampler.set_epoch(epoch)
        steps = list(batches(train_idx[torch.tensor(list(sampler), dtype=torch.long)], t.batch_size))
        first = start_step if epoch == start_epoch else 0
        loss_sum, loss_count = carried if epoch == start_epoch else (0.0, 0)
        lr = optimizer.param_groups[0]["lr"]
        tic = time.perf_counter()
        bar = tqdm(total=len(steps), initial=first, desc=f"epoch {epoch + 1}/{t.epochs}", disable=not info.is_main,
                   leave=False, unit="step", file=sys.stdout)
        for step in range(first, len(steps)):
            if broadcast_flag(stop.requested, info, device):
                return interrupt(writer, info, ckpt_dir, checkpoint(epoch, step, loss_sum, loss_count))
            _, _, loss = forward_loss(model, loss_fn, images, masks, steps[step], normalization, device, precision,
                                      mem, device_stats)
            if broadcast_flag(not bool(torch.isfinite(loss)), info, device):
                if info.is_main:
                    print(f"error: non-finite loss at epoch {epoch + 1}, step {step + 1}; stopped. The last good "
                          f"checkpoint is {ckpt_dir / 'last.pth'} (try a lower learning rate)", file=sys.stderr)
                if writer:
                    writer.close()
                cleanup(info)
                return EXIT_NONFINITE
            optimizer_step(loss, optimizer, scaler)
            loss_value = loss.item()
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            if writer:
                writer.add_scalar("train/loss_iter", loss_value, epoch * len(steps) + step)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        bar.close()
        totals = all_reduce_sum(torch.tensor([loss_sum, loss_count], dtype=torch.float64, device=device), info)
        train_loss = float(totals[0] / totals[1].clamp(min=1))
        scheduler.step()
        record = {"epoch": epoch + 1, "train_loss": train_loss, "lr": lr, "seconds": time.perf_counter() - tic}
        if len(val_idx):
            val_loss, cm = evaluate(model, images, masks, val_idx, normalization, loss_fn,
                                    params.n_classes, device, precision, mem, info=info, image_stats=device_stats)
            iou = iou_per_class(cm)
            record.update(val_loss=val_loss, val_miou=mean_iou(cm),
                          val_iou={n: float(v) for n, v in zip(params.class_names, iou)})
        history.append(record)
        if info.is_main:
            improved = record.get("val_miou", -math.inf) > best
            best = max(best, record.get("val_miou", -math.inf))
            log_epoch(writer, record, data, figure_idx, model, normalization, device, precision, mem, params,
                      image_stats)
            state = checkpoint(epoch + 1, 0, 0.0, 0)
            save_checkpoint(ckpt_dir / "last.pth", state)
            if improved:
                save_checkpoint(ckpt_dir / "best.pth", state)
            tqdm.write(summary_line(record, t.epochs, params.class_names), file=sys.stdout)
        if broadcast_flag(stop.requested, info, device) and epoch + 1 < t.epochs:
            return interrupt(writer, info, ckpt_dir, checkpoint(epoch + 1, 0, 0.0, 0))
    if writer:
        final = history[-1]
        writer.add_hparams(
            {"learning_rate": t.learning_rate, "batch_size": t.batch_size, "epochs": t.epochs,
             "base_channels": params.model.base_channels, "bilinear": params.model.bilinear, "loss": t.loss,
             "precision": precision, "seed": t.seed, "processes": info.world_size, "folder": str(folder)},
            {"hparam/val_miou": final.get("val_miou", float("nan")), "hparam/best_val_miou": best,
             "hparam/val_loss": final.get("val_loss", float("nan")), "hparam/train_loss": final["train_loss"]},
            run_name=".")
        writer.close()
        print(f"done: checkpoints in {ckpt_dir}, TensorBoard events in {run_dir}")
    cleanup(info)
    return 0


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


def log_epoch(writer, record: dict, data: PatchDataset, figure_idx: torch.Tensor, model, normalization: dict,
              device: torch.device, precision: str, mem: torch.memory_format, params: Params,
              image_stats: torch.Tensor | None = None) -> None:
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
        from lib.visualize import show_validation

        labels = predict_labels(model, data.images, figure_idx, normalization, device, precision, mem, image_stats)
        images = data.images[figure_idx].permute(0, 2, 3, 1).squeeze(-1).numpy()
        writer.add_figure("val/examples", show_validation(images, data.masks[figure_idx].numpy(), labels.numpy(),
                                                           params.class_colors), e)
    writer.flush()


def summary_line(record: dict, epochs: int, names: list[str]) -> str:
    line = f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f}"
    if "val_miou" in record:
        ious = " ".join(f"{n} {record['val_iou'][n]:.3f}" for n in names)
        line += f"  val loss {record['val_loss']:.4f}  val mIoU {record['val_miou']:.4f} ({ious})"
    return line + f"  lr {record['lr']:.2e}  {record['seconds']:.1f}s"


def interrupt(writer, info: DistInfo, ckpt_dir: Path, state: dict) -> int:
    """Ctrl-C: save ``interrupted.pth`` at a step boundary and say how to resume."""
    if info.is_main:
        save_checkpoint(ckpt_dir / "interrupted.pth", state)
        if writer:
            writer.close()
        print(f"\ninterrupted at epoch {state['epoch'] + 1}, step {state['step_in_epoch']}; resume with: "
              f"python train.py --load {ckpt_dir / 'interrupted.pth'}", file=sys.stderr)
    cleanup(info)
    return EXIT_INTERRUPTED


if __name__ == "__main__":
    try:
        status = main()
    except SystemExit as stop:  # a UserError leaves main() through cli_main's sys.exit(2)
        status = stop.code
    exit_process(status)
