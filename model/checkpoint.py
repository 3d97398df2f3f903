"""Checkpoints: plain data (tensors, numbers, strings), written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from lib.core.atomic import atomic_path, atomic_write_bytes, temporary_name
from lib.core.errors import UserError, write_error
from lib.core.normalization import as_spec, check_spec
from lib.core.params import Params, params_from_dict
from model.unet_model import UNet

# what inference needs (every checkpoint has these) ...
MODEL_KEYS = ("model_state", "model_config", "class_names", "class_colors", "normalization", "params")
# ... and what train.py adds to resume a run exactly where it stopped
RESUME_KEYS = ("epoch", "step_in_epoch", "epoch_loss", "steps_done", "epoch_rate", "optimizer_state", "scaler_state",
               "rng", "best_miou", "history", "run_name", "checkpoint_dir", "run_dir", "patch_folder", "val_sources",
               "seed", "precision", "world_size", "git_commit", "versions")
# checkpoints written before these were recorded still resume (train.py)
ADDED_LATER = ("checkpoint_dir", "run_dir", "steps_done", "epoch_rate")


def build_checkpoint(model: UNet, params: Params, normalization: dict, training: dict[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The contents of a checkpoint, defined here once: the model's weights (on the CPU, contiguous) and
    configuration, the classes, the input normalisation and all parameters of the run; with ``training``, the state
    that resumes it.

    Args:
        model: the U-Net (a ``torch.compile`` or DDP wrapper of it is unwrapped: its weights' names carry a prefix
            that no U-Net loads).
        params: every parameter of the run, flags applied.
        normalization: the input normalisation (see :func:`lib.core.normalization.compute_normalization`).
        training: exactly the entries of :data:`RESUME_KEYS` (train.py's checkpoints), or None.

    Returns:
        The checkpoint as plain data, for :func:`save_checkpoint`.

    Raises:
        ValueError: ``training`` lacks an entry of :data:`RESUME_KEYS` or has another; the model is no U-Net, its
            class count is not that of ``params``, or ``normalization`` does not fit its input channels (a checkpoint
            no load takes).
    """
    model = _unwrapped(model)
    if model.n_classes != len(params.class_names):
        raise ValueError(f"a U-Net of {model.n_classes} classes for parameters of {len(params.class_names)} classes")
    check_spec(normalization, model.n_channels)
    state = {"model_state": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
             "model_config": model.config(), "class_names": list(params.class_names),
             "class_colors": [list(c) for c in params.class_colors], "normalization": normalization,
             "params": params.to_dict()}
    if training is not None:
        if set(training) != set(RESUME_KEYS):
            raise ValueError(f"training entries differ from RESUME_KEYS: {sorted(set(training) ^ set(RESUME_KEYS))}")
        state.update(training)
    return state


def _unwrapped(model: torch.nn.Module) -> UNet:
    """The U-Net inside ``torch.compile`` and DDP wrappers.

    Raises:
        ValueError: no U-Net is inside.
    """
    while not isinstance(model, UNet):
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            raise ValueError(f"expected a U-Net of model.unet_model (or a compiled or DDP one), got "
                             f"{type(model).__name__}")
    return model


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Serialise ``state`` in memory, then write it to ``path`` atomically (a kill never leaves half a file).

    Raises:
        UserError: the folder is not writable or the disk is full; the previous file at ``path`` is left intact.
    """
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def link_checkpoint(source: str | Path, path: str | Path) -> None:
    """Make ``path`` the same checkpoint as ``source`` without serialising it again: a hard link under a temporary
    name, renamed into place (a copy, written atomically, where the filesystem has no hard links). ``source`` was
    synced when written, and checkpoints are only ever replaced by a rename, never rewritten, so ``path`` keeps its
    content when ``source`` is replaced later.

    Raises:
        UserError: the folder is not writable or the disk is full; the previous file at ``path`` is left intact.
    """
    source, path = Path(source), Path(path)
    tmp = temporary_name(path)
    try:
        os.link(source, tmp)
    except OSError:
        with atomic_path(path) as copy:
            shutil.copyfile(source, copy)
        return
    try:
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_error(path, err) from None


def _host_copy(value: Any) -> Any:
    """``value`` with every tensor copied to host memory, and its lists and dicts copied: a snapshot that training
    can go on changing under."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


class CheckpointWriter:
    """Writes checkpoints in a background thread, one at a time, so that training goes on while a large state is
    serialised and synced to disk (the published width-64 model with its momentum is 250 MB, about a second a write
    on a CPU of this project's machines, a sixth of a GPU epoch).

    :meth:`save` takes a snapshot of the state first, so the state may change as soon as it returns. A failed write
    is raised by the next :meth:`save` or :meth:`wait`.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, state: dict[str, Any], path: str | Path, links: Sequence[str | Path] = ()) -> None:
        """Write ``state`` to ``path`` (:func:`save_checkpoint`), then make each of ``links`` the same file
        (:func:`link_checkpoint`), in the background.

        Raises:
            UserError: the previous write failed.
        """
        self.wait()
        snapshot = _host_copy(state)
        self._thread = threading.Thread(target=self._write, args=(snapshot, Path(path), [Path(p) for p in links]),
                                        name="checkpoint-writer")
        self._thread.start()

    def _write(self, state: dict[str, Any], path: Path, links: list[Path]) -> None:
        try:
            save_checkpoint(path, state)
            for link in links:
                link_checkpoint(path, link)
        except BaseException as err:  # raised in the training thread by the next save or wait
            self._error = err

    def wait(self) -> None:
        """Block until the write in progress (if any) is on disk.

        Raises:
            UserError: it failed (the previous files are intact).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def _is_torch_file(path: Path) -> bool:
    """Whether a file starts as ``torch.save`` writes: a zip archive, or a pickle (the legacy format)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as err:
        raise UserError(f"{path}: not a readable checkpoint ({err.strerror or err})") from None
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


# the lines torch puts around the unpickler's reason (how to load the file anyway, where to read more)
_TORCH_ADVICE = ("Weights only load failed", "Please file an issue", "Check the documentation", "In PyTorch 2.6",
                 "(1)", "(2)")


def _first_sentence(text: str, limit: int = 200) -> str:
    """The first sentence of an error's text, without its full stop, cut to ``limit`` characters with an ellipsis."""
    sentence = text.strip().split(". ")[0].rstrip(".")
    return sentence if len(sentence) <= limit else sentence[:limit - 1] + "…"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: a file carrying code is refused, never run.

    Raises:
        UserError: the file is missing, truncated, not a checkpoint, or lacks the model entries (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {'not a file' if path.exists() else 'checkpoint not found'}")
    if not _is_torch_file(path):
        raise UserError(f"{path}: not a checkpoint (not a file written by torch.save)")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says all there is
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch wraps the unpickler's reason ("Unsupported global: GLOBAL model.unet_model.UNet was not an allowed
        # global by default", a whole model saved) in advice on loading the file anyway
        text = str(err).split("WeightsUnpickler error:", 1)[-1]
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        reason = next((ln for ln in lines if not ln.startswith(_TORCH_ADVICE)), "unsafe content")
        raise UserError(f"{path}: refused, not a plain-data checkpoint ({_first_sentence(reason)}); "
                        f"expected the state a train.py run saves") from None
    except Exception as err:  # noqa: BLE001 - any other failure of the unpickler means "not a checkpoint"
        # a file cut short: "PytorchStreamReader failed reading zip archive: failed finding central directory"
        reason = next((ln for ln in str(err).splitlines() if ln.strip()), err.__class__.__name__)
        raise UserError(f"{path}: not a readable checkpoint ({_first_sentence(reason)}); "
                        f"expected a whole file saved by train.py") from None
    if not isinstance(state, dict):
        raise UserError(f"{path}: not a checkpoint of this project (expected a dict of {', '.join(MODEL_KEYS)})")
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise UserError(f"{path}: not a checkpoint of this project (lacks {', '.join(missing)}; expected keys "
                        f"{', '.join(MODEL_KEYS)})")
    check_model_entries(state, path)
    return state


def check_model_entries(state: dict[str, Any], path: str | Path) -> None:
    """Refuse a checkpoint whose model entries do not fit together: the configuration, the classes and the
    normalisation (the weights are checked as they load, :func:`load_weights`; the parameters as they are read,
    :func:`checkpoint_params`, so a tool that needs the weights alone reads a checkpoint whatever its parameters).

    Raises:
        UserError: naming the file and the entry.
    """
    config = state["model_config"]
    if not isinstance(config, dict) or not all(
            type(config.get(k)) is int and config[k] >= 1 for k in ("n_channels", "n_classes", "base_channels")):
        raise UserError(f"{path}: model_config {str(config)[:160]}: expected positive integers n_channels, n_classes "
                        "and base_channels")
    for key in ("class_names", "class_colors"):
        entries = state[key]
        if not isinstance(entries, (list, tuple)) or len(entries) != config["n_classes"]:
            count = f"{len(entries)} entries" if isinstance(entries, (list, tuple)) else "no list"
            raise UserError(f"{path}: {key} has {count}, model_config.n_classes is {config['n_classes']}")
    try:
        check_spec(state["normalization"], config["n_channels"])
    except ValueError as err:
        raise UserError(f"{path}: normalization: {err}") from None


def checkpoint_params(state: dict[str, Any], path: str | Path) -> Params:
    """The parameters a checkpoint's run was trained with.

    Raises:
        UserError: they are not valid parameters of this version (naming the file and the key).
    """
    try:
        return params_from_dict(state["params"])
    except UserError as err:
        raise UserError(f"{path}: params: {err}") from None


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """Refuse to resume from a checkpoint without train.py's training state.

    Raises:
        UserError: naming the file and the missing entries.
    """
    missing = [k for k in RESUME_KEYS if k not in state and k not in ADDED_LATER]
    if missing:
        raise UserError(f"{path}: cannot resume, not a checkpoint written by train.py (lacks {', '.join(missing)})")


def model_from_checkpoint(state: dict[str, Any], path: str | Path = "checkpoint") -> UNet:
    """Rebuild the U-Net a checkpoint describes and load its weights (in training mode, as a new module is: call
    ``.eval()`` to predict; :class:`lib.segmenter.Segmenter` does).

    Raises:
        UserError: the configuration or the weights do not fit a U-Net.
    """
    config = state["model_config"]
    try:
        model = UNet(**config)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: model_config {str(config)[:160]} is not a U-Net's ({err})") from None
    load_weights(model, state["model_state"], path)
    return model


def load_weights(model: UNet, weights: Any, path: str | Path) -> None:
    """Load a checkpoint's ``model_state`` into ``model``.

    Raises:
        UserError: naming the file and the first weights that are missing, unexpected, of another shape, or empty.
    """
    expected = model.state_dict()
    if not isinstance(weights, dict):
        raise UserError(f"{path}: model_state is a {type(weights).__name__}, expected a dict of weights")
    # BatchNorm's step counters are no weights: a checkpoint without them loads, counting from 0
    weights = {**{k: torch.tensor(0) for k in expected if k.endswith("num_batches_tracked")}, **weights}
    problems = [f"lacks {k}" for k in expected if k not in weights]
    problems += [f"has {k}, which the model lacks" for k in weights if k not in expected]
    for key in (k for k in expected if k in weights):
        given, shape = weights[key], expected[key].shape
        if not isinstance(given, torch.Tensor):
            problems.append(f"{key} is a {type(given).__name__}, not a tensor")
        elif given.shape != shape:
            problems.append(f"{key} is {'×'.join(map(str, given.shape))}, the model's {'×'.join(map(str, shape))}")
        elif given.is_meta:
            problems.append(f"{key} holds no data (a meta tensor)")
    if problems:
        more = f" and {len(problems) - 2} more" if len(problems) > 2 else ""
        raise UserError(f"{path}: weights do not fit the model {model.config()} ({'; '.join(problems[:2])}{more})")
    model.load_state_dict(weights)


def check_compatible(state: dict[str, Any], n_channels: int, n_classes: int, path: str | Path,
                     dtype: str | None = None, classes_from: str = "parameters.json") -> None:
    """Refuse a checkpoint trained for another number of input channels or classes (the one check of the class
    count), or (given ``dtype``) on images of another pixel type.

    Raises:
        UserError: naming the file and both numbers (or types); ``classes_from`` names where ``n_classes`` comes from.
    """
    config = state["model_config"]
    trained = as_spec(state["normalization"])["dtype"]
    if dtype is not None and trained != dtype:
        raise UserError(f"{path}: checkpoint was trained on {trained} images, the data is {dtype}")
    if config.get("n_channels") != n_channels:
        raise UserError(f"{path}: checkpoint expects {config.get('n_channels')} input channel(s), "
                        f"the data has {n_channels}")
    if config.get("n_classes") != n_classes:
        raise UserError(f"{path}: checkpoint was trained for {config.get('n_classes')} classes, "
                        f"{classes_from} has {n_classes}")


def latest_checkpoint(folder: str | Path = "checkpoints", name: str = "best.pth") -> Path:
    """The most recently written ``<run>/<name>`` under ``folder`` (e.g. the last ``make demo``'s best model).

    Raises:
        UserError: there is none.
    """
    candidates = sorted(Path(folder).glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"{folder}: no {name} found in any run folder (train a model first)")
    return candidates[-1]
