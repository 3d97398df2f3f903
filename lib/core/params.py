"""parameters.json: every parameter of the analysis, read into typed dataclasses and validated once.

Each field carries its own check (bounds or choices). Any problem raises :class:`UserError` with one line naming the
file and the key, e.g. ``parameters.json: training.learning_rate: expected a number > 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.core.errors import UserError

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "parameters.json"  # the repository root


def _spec(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
          choices: tuple | None = None) -> Any:
    """A dataclass field with a default and its allowed values (inclusive bounds unless ``lo_open``)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: json.loads(json.dumps(default)), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ClassSpec:
    """One segmentation class: its name, its index in the masks and its display colour (RGB)."""

    name: str = _spec("")
    index: int = _spec(0, 0, 255)
    color: tuple[int, int, int] = _spec((0, 0, 0), 0, 255)


SEED_MAX = 2**63 - 1  # within torch.manual_seed's range, with room for DistributedSampler's seed + epoch
GENERATORS = ("default", "alternate")  # the synthetic sets of lib.generate (lib/core/synthetic*.py)
NORMALIZATIONS = ("zscore", "percentile", "image", "scale")  # lib.core.normalization's modes (it imports torch)


@dataclass(frozen=True)
class DataParams:
    """Where the images live, and how the synthetic benchmark is drawn (pairs are ``[low, high]`` ranges)."""

    root: str = _spec("data")
    training_folder: str = _spec("images_training")
    test_folder: str = _spec("images_test")
    image_prefix: str = _spec("")
    mask_prefix: str = _spec("")
    normalization: str = _spec("zscore", choices=NORMALIZATIONS)
    percentiles: tuple[float, float] = _spec((0.5, 99.5), 0.0, 100.0)
    keep_alpha: bool = _spec(False)
    channel_axis: str = _spec("auto", choices=("auto", "first", "last"))
    generator: str = _spec("default", choices=GENERATORS)
    seed: int = _spec(0, 0, SEED_MAX)
    n_training: int = _spec(100, 1)
    n_test: int = _spec(10, 0)
    height: int = _spec(400, 8)
    width: int = _spec(200, 8)
    background_mean: tuple[float, float] = _spec((0.7, 0.9), 0.0, 1.0)
    background_std: float = _spec(0.1, 0.0)
    background_clip: tuple[float, float] = _spec((0.6, 1.0), 0.0, 1.0)
    n_lines: tuple[int, int] = _spec((1, 9), 0)
    n_ellipses: tuple[int, int] = _spec((1, 9), 0)
    line_length: tuple[float, float] = _spec((20.0, 200.0), 1.0)
    line_thickness: tuple[float, float] = _spec((3.0, 5.0), 1.0)
    ellipse_radius: tuple[float, float] = _spec((5.0, 20.0), 1.0)
    ellipse_axis_ratio: tuple[float, float] = _spec((0.5, 2.0), 0.0, lo_open=True)
    shape_gray: tuple[float, float] = _spec((0.0, 0.7), 0.0, 1.0)

    @property
    def read_options(self) -> dict[str, Any]:
        """How images of this data set are read (the keyword arguments of ``lib.core.imageio.read_image``)."""
        return {"keep_alpha": self.keep_alpha, "channel_axis": self.channel_axis}


@dataclass(frozen=True)
class PatchParams:
    """Patch cutting: size, how many per image, augmentation and sampling."""

    size: int = _spec(96, 16)
    per_image: int = _spec(20, 1)
    flips: bool = _spec(True)
    rotate90: bool = _spec(False)
    foreground_fraction: float = _spec(0.0, 0.0, 1.0)
    seed: int = _spec(0, 0, SEED_MAX)

    @property
    def folder(self) -> str:
        """Default folder name under the data root: follows the patch size (``patches_s96``)."""
        return f"patches_s{self.size}"


@dataclass(frozen=True)
class ModelParams:
    """U-Net width (channels of the first level; 64 is the paper's) and the upsampling kind."""

    base_channels: int = _spec(64, 1, 1024)
    bilinear: bool = _spec(False)


SCHEDULES = ("published", "cosine", "step")  # lib.core.schedule's (it imports torch, which this module does not)
OPTIMIZERS = ("sgd", "adamw")  # train.py's make_optimizer
LOSSES = ("ce", "dice_ce")  # lib.core.losses' make_loss
# torch.compile of the training forward and backward: "off", or one of torch.compile's modes
DEVICES = ("auto", "cpu", "cuda", "mps")  # lib.core.device's select_device
COMPUTE_PRECISIONS = ("fp32", "bf16", "fp16")  # what a run computes in (lib.core.device's autocast)
PRECISIONS = ("auto", *COMPUTE_PRECISIONS)  # lib.core.device's resolve_precision
BLENDS = ("mean", "gaussian")  # lib.core.inference's blend weights
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainingParams:
    """Optimisation, validation split, precision and output folders."""

    folder: str = _spec("patches_s96")
    epochs: int = _spec(100, 1)
    learning_rate: float = _spec(0.01, 0.0, lo_open=True)
    batch_size: int = _spec(16, 1)
    optimizer: str = _spec("sgd", choices=OPTIMIZERS)
    momentum: float = _spec(0.9, 0.0, 1.0)
    weight_decay: float = _spec(1e-4, 0.0)
    lr_final_factor: float = _spec(0.01, 0.0, 1.0)
    schedule: str = _spec("published", choices=SCHEDULES)
    warmup_fraction: float = _spec(0.0, 0.0, 0.5)
    val_fraction: float = _spec(0.1, 0.0, 0.9)
    loss: str = _spec("ce", choices=LOSSES)
    class_weights: list[float] | None = _spec(None, 0.0)
    seed: int = _spec(0, 0, SEED_MAX)
    device: str = _spec("auto", choices=DEVICES)
    precision: str = _spec("auto", choices=PRECISIONS)
    compile: str = _spec("off", choices=COMPILE_MODES)
    figure_patches: int = _spec(4, 0, 64)
    checkpoints_dir: str = _spec("checkpoints")
    runs_dir: str = _spec("runs")


@dataclass(frozen=True)
class InferenceParams:
    """Sliding-window inference: window overlap, blending, test-time flips and windows per batch."""

    overlap: float = _spec(0.5, 0.0, 0.95)
    blend: str = _spec("mean", choices=BLENDS)
    tta: bool = _spec(False)
    batch_size: int = _spec(32, 1)


@dataclass(frozen=True)
class Params:
    """All parameters of the analysis (one group per key of parameters.json)."""

    data: DataParams = field(default_factory=DataParams)
    classes: list[ClassSpec] = field(default_factory=lambda: [
        ClassSpec("background", 0, (0, 0, 0)), ClassSpec("line", 1, (230, 40, 40)),
        ClassSpec("ellipse", 2, (120, 250, 80))])
    patches: PatchParams = field(default_factory=PatchParams)
    model: ModelParams = field(default_factory=ModelParams)
    training: TrainingParams = field(default_factory=TrainingParams)
    inference: InferenceParams = field(default_factory=InferenceParams)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def class_colors(self) -> list[tuple[int, int, int]]:
        return [tuple(c.color) for c in self.classes]

    def to_dict(self) -> dict:
        """The parameters as plain JSON-able data (the shape of parameters.json)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


class _Invalid(Exception):
    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)


def _describe(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {len(str(abs(value)))} digits"  # one short line, not hundreds of digits
    return json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else str(value)


def _bounds_text(meta: dict) -> str:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    # "> 0", not "> 0.0"; an integer bound exactly
    lo, hi = (None if b is None else f"{b:g}" if isinstance(b, float) else str(b) for b in (lo, hi))
    if choices:
        return "one of " + ", ".join(repr(c) for c in choices)
    if lo is not None and hi is not None:
        return f"in ({lo}, {hi}]" if meta.get("lo_open") else f"in [{lo}, {hi}]"
    if lo is not None:
        return f"> {lo}" if meta.get("lo_open") else f">= {lo}"
    return ""


def _check_scalar(value: Any, meta: dict, key: str, kind: str) -> None:
    lo, hi, choices = meta.get("lo"), meta.get("hi"), meta.get("choices")
    bad = (choices is not None and value not in choices) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and (
            (isinstance(value, float) and not math.isfinite(value))  # (an int too large for a float is compared exact)
            or (lo is not None and (value <= lo if meta.get("lo_open") else value < lo))
            or (hi is not None and value > hi)))
    if bad:
        raise _Invalid(key, f"expected {kind} {_bounds_text(meta)}, got {_describe(value)}".replace("  ", " "))


def _convert(value: Any, hint: Any, key: str, meta: dict) -> Any:
    """Check ``value`` against the type ``hint`` and the field's bounds; return it converted."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        return _convert(value, inner, key, meta)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin in (list, tuple):
        n = len(args) if origin is tuple and Ellipsis not in args else None
        what = f"a list of {n} values" if n else "a list"
        if not isinstance(value, list) or (n is not None and len(value) != n):
            raise _Invalid(key, f"expected {what}, got {_describe(value)}")
        items = [_convert(v, args[i] if n else args[0], f"{key}[{i}]", meta) for i, v in enumerate(value)]
        if n == 2 and meta.get("range") and items[0] > items[1]:
            raise _Invalid(key, f"expected [low, high] with low <= high, got {_describe(value)}")
        return tuple(items) if origin is tuple else items
    if hint is bool:
        if not isinstance(value, bool):
            raise _Invalid(key, f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(key, f"expected an integer, got {_describe(value)}")
        _check_scalar(value, meta, key, "an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                isinstance(value, int) and abs(value) > sys.float_info.max):  # not a float either
            raise _Invalid(key, f"expected a number, got {_describe(value)}")
        _check_scalar(value, meta, key, "a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _Invalid(key, f"expected a string, got {_describe(value)}")
        _check_scalar(value, meta, key, "a string")
        return value
    raise TypeError(f"unsupported parameter type {hint!r}")  # a bug in this module, not user input


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise _Invalid(prefix, f"expected an object{'' if prefix else ' at the top level'}, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        name = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise _Invalid(name, f"unknown key (expected one of {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        meta = dict(fields[name].metadata)
        if typing.get_origin(hints[name]) is tuple and len(typing.get_args(hints[name])) == 2:
            meta["range"] = name not in ("color", "percentiles")  # percentiles: low < high, checked with the rest
        values[name] = _convert(value, hints[name], f"{prefix}.{name}" if prefix else name, meta)
    return cls(**values)


def _check_consistency(params: Params) -> None:
    classes = params.classes
    if len(classes) < 2:
        raise _Invalid("classes", f"expected at least 2 classes, got {len(classes)}")
    indices = sorted(c.index for c in classes)
    if indices != list(range(len(classes))):
        raise _Invalid("classes", f"expected indices 0..{len(classes) - 1}, each once, got {indices}")
    names = [c.name for c in classes]
    if "" in names:
        raise _Invalid(f"classes[{names.index('')}].name", "missing or empty (expected the name of the class)")
    if len(set(names)) != len(names):
        raise _Invalid("classes", f"expected distinct names, got {names}")
    colors = [tuple(c.color) for c in classes]
    if len(set(colors)) != len(colors):
        raise _Invalid("classes", "expected a distinct colour for each class")
    low, high = params.data.percentiles
    if low >= high:
        raise _Invalid("data.percentiles", f"expected [low, high] with low < high, got {[low, high]}")
    weights = params.training.class_weights
    if weights is not None and len(weights) != len(classes):
        raise _Invalid("training.class_weights", f"expected {len(classes)} weights (one per class), got {len(weights)}")
    if weights is not None and not any(w > 0 for w in weights):
        raise _Invalid("training.class_weights", f"expected at least one weight > 0, got {weights}")


def params_from_dict(raw: Any) -> Params:
    """Build and validate :class:`Params` from parsed JSON; missing keys take their defaults.

    Raises:
        UserError: an unknown key, a wrong type or an out-of-range value, naming the key.
    """
    try:
        params = _build(Params, raw, "")
        params = dataclasses.replace(params, classes=sorted(params.classes, key=lambda c: c.index))
        _check_consistency(params)
    except _Invalid as err:
        raise UserError(str(err)) from None
    return params


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key given twice (``json`` would keep the last one silently)."""
    members: dict[str, Any] = {}
    for key, value in pairs:
        if key in members:
            raise UserError(f"key {key!r} appears twice in one object, where only the last would count")
        members[key] = value
    return members


def load_params(path: str | Path | None = None) -> Params:
    """Read and validate a parameters file (default: the repository's ``parameters.json``).

    Args:
        path: the JSON file.

    Returns:
        The validated parameters.

    Raises:
        UserError: the file is missing or unreadable, is not valid JSON (with line and column), or holds an unknown
            key, a wrong type or an out-of-range value (naming the key).
    """
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: parameters file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read parameters file ({err.__class__.__name__})") from None
    try:
        raw = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from None
    except UserError as err:
        raise UserError(f"{path}: {err}") from None
    except ValueError as err:  # a number of more digits than Python converts (4300)
        raise UserError(f"{path}: invalid JSON ({err})") from None
    try:
        return params_from_dict(raw)
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def replace(params: Params, group: str, **changes: Any) -> Params:
    """A copy of ``params`` with some fields of one group changed (``None`` values are ignored), re-validated.

    Used by the command-line flags, which override parameters.json.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    if not changes:
        return params
    raw = params.to_dict()
    raw[group].update(changes)
    try:
        return params_from_dict(raw)
    except UserError as err:
        raise UserError(f"command-line flag: {err}") from None
