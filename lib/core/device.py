"""Device and precision: CUDA, then MPS, then CPU; bf16 autocast on CPUs that support it, fp16/bf16 AMP on CUDA."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lib.core.distributed import DistInfo, init_distributed
from lib.core.errors import UserError
from lib.core.params import COMPUTE_PRECISIONS, DEVICES, PRECISIONS


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; a named device that is not available is an error.

    Raises:
        UserError: the requested device is not available.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("--device mps: no MPS device is available")
    if name not in DEVICES:
        raise UserError(f"--device {name}: expected {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, amp: bool = False) -> str:
    """The precision a run uses: ``fp32``, ``bf16`` or ``fp16``.

    ``auto`` means bf16 on a CPU with native bf16 and fp32 on other CPUs; on CUDA it means fp32 unless ``amp``
    (then bf16 where the device computes it natively, :func:`cuda_has_bf16`, else fp16 with a gradient scaler); on
    MPS fp32.

    Raises:
        UserError: a precision that is none (from Python, anything else ran in fp16), or fp16 on CPU (PyTorch has no
            fp16 CPU autocast worth using).
    """
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if native(device, "bf16") else "fp32"
        if device.type == "cuda" and amp:
            return "bf16" if native(device, "bf16") else "fp16"
        return "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r}: expected {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}")
    if precision == "fp16" and device.type == "cpu":
        raise UserError("--precision fp16: not supported on CPU (use bf16 or fp32)")
    return precision


def inference_precision(precision: str, trained: object, device: torch.device) -> str:
    """The precision inference runs in: ``auto`` is the one the model was trained and validated in (a checkpoint's
    ``precision``) where ``device`` computes it natively (:func:`native`), else what ``auto`` gives there with AMP
    (bf16 on CPUs and CUDA devices with native bf16, fp16 on other CUDA devices, fp32 elsewhere). An fp32-trained
    model is thus not run in bf16 unasked (its labels moved on 0.05–0.08% of pixels in a QA run), and a bf16-trained
    one not in fp32 (slower, for labels of the same accuracy).

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (any but ``auto`` is taken as given).
        trained: the checkpoint's ``precision`` entry; None (or any other value) where it has none.
        device: the device inference runs on.

    Raises:
        UserError: a precision that is none, or fp16 on CPU.
    """
    if precision == "auto" and trained in COMPUTE_PRECISIONS and native(device, trained):
        return str(trained)
    return resolve_precision(precision, device, amp=True)


def native(device: torch.device, precision: str) -> bool:
    """Whether ``device`` computes in ``precision`` natively: fp32 everywhere; bf16 on CPUs with AVX-512 BF16 or AMX
    and on CUDA devices of compute capability 8 or later; fp16 on CUDA and MPS devices."""
    if precision == "bf16":
        return cpu_has_bf16() if device.type == "cpu" else device.type == "cuda" and cuda_has_bf16()
    return precision == "fp32" or (precision == "fp16" and device.type in ("cuda", "mps"))


def cuda_has_bf16() -> bool:
    """Whether the CUDA device computes bfloat16 natively (compute capability 8 or later): PyTorch also calls it
    supported where it is emulated, slower than fp16, on older GPUs."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a PyTorch that emulates nothing (before 2.4) has no such argument
        return torch.cuda.is_bf16_supported()


def check_compute_precision(precision: str) -> None:
    """Refuse a precision that no run computes in.

    Raises:
        ValueError: not one of ``fp32``, ``bf16`` or ``fp16``.
    """
    if precision not in COMPUTE_PRECISIONS:
        raise ValueError(f"precision must be one of {COMPUTE_PRECISIONS}, got {precision!r}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for a precision (a no-op for fp32).

    Raises:
        ValueError: a precision other than ``fp32``, ``bf16`` or ``fp16`` (``float32`` ran in fp16).
    """
    check_compute_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


# pixel types with few kernels off the CPU (PyTorch 2.11 cannot index a uint16 tensor on CUDA): held there as a
# signed type that holds every value, so that normalisation gives the same floats
_WIDENED = {torch.uint16: torch.int32}


def move_pixels(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Stored pixels (images or patches in their stored type) on ``device``; off the CPU a uint16 tensor is widened
    to int32 first, on the host, which holds every value exactly.

    Args:
        pixels: a tensor of any pixel type.
        device: where it goes.

    Returns:
        The tensor on ``device``: the same values, in ``int32`` where a ``uint16`` tensor leaves the CPU.
    """
    device = torch.device(device)
    if device.type != "cpu" and pixels.dtype in _WIDENED:
        pixels = pixels.to(_WIDENED[pixels.dtype])
    return pixels.to(device, non_blocking=True)


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU and CUDA (faster convolutions with oneDNN and cuDNN), contiguous elsewhere."""
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: the device, the autocast precision, the memory format of its inputs, and the
    process's place in a torchrun job. Passed as one value instead of four parameters."""

    device: torch.device
    precision: str = "fp32"
    memory_format: torch.memory_format = torch.contiguous_format
    dist: DistInfo = field(default_factory=DistInfo)

    @classmethod
    def start(cls, device: str = "auto", precision: str = "auto", amp: bool = False) -> Runtime:
        """Pick the device (:func:`select_device`), join the process group when started by torchrun (each process
        on its own GPU), and resolve the precision (:func:`resolve_precision`) and memory format.

        Raises:
            UserError: the device is not available, or the precision is not supported on it.
        """
        dev = select_device(device)
        resolved = resolve_precision(precision, dev, amp)  # before joining: a refused precision leaves no group
        dist = init_distributed(dev.type)
        if dist.enabled and dev.type == "cuda":
            dev = torch.device("cuda", dist.local_rank)
        return cls(dev, resolved, memory_format(dev), dist)
