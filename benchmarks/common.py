"""Shared helpers of the benchmarks: interleaved timing, machine information, JSON results and tables.

Timing method: every variant gets ``warmup`` untimed calls, then ``repeats`` rounds in which each variant runs once,
in an order that rotates from round to round, so that load from other processes hits all variants alike. A variant's
cost is the minimum over the rounds (noise only ever adds time); the median is recorded as well.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import torch

from lib.core.allocator import retain_freed_memory
from lib.core.atomic import atomic_write_text, make_folder
from lib.core.device import Runtime, memory_format, resolve_precision
from lib.core.errors import ArgumentParser

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a process a benchmark starts: this one, the repository first on ``PYTHONPATH`` (packages
    installed elsewhere on it stay found), and ``extra``."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def base_parser(doc: str, repeats: bool = True, warmup: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark has: ``--tiny``, ``--out-dir``, ``--threads``, and
    ``--repeats`` and ``--warmup`` where the benchmark times rounds and warm-up calls (a flag offered and then
    ignored misled), described by the first paragraph of the benchmark's docstring ``doc`` (its first line alone
    broke off mid-sentence where the summary runs over two lines)."""
    # no abbreviations: a flag a benchmark does not offer (--warmup) was taken for one it does (--warmup-fraction)
    p = ArgumentParser(description=" ".join(doc.split("\n\n")[0].split()), allow_abbrev=False)
    p.add_argument("--tiny", action="store_true", help="tiny sizes and one repeat (a smoke test of a few seconds)")
    if repeats:
        p.add_argument("--repeats", type=int, default=None, help="timed rounds per variant (default: per benchmark)")
    if warmup:
        p.add_argument("--warmup", type=int, default=1, help="untimed calls per variant before timing")
    p.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder of the JSON result")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads, also of the commands a benchmark starts (default: torch's choice)")
    return p


def check_device(p: argparse.ArgumentParser, device: str) -> torch.device:
    """The ``--device`` asked for, refused in one line (the parser's error, exit 2) where it is CUDA and there is
    none: torch's own error is a traceback from deep in the first CUDA call."""
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (--device cpu times this CPU)")
    return torch.device(device)


def apply_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count when asked, here and (by ``OMP_NUM_THREADS``) in the commands the benchmark
    starts afterwards, and the allocator setting the project's commands use (it applies to every variant of a
    benchmark alike, MONAI's included)."""
    retain_freed_memory()
    if threads:
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


def mixed_precision_runtime(device: torch.device) -> Runtime:
    """The precision and memory format the project picks on ``device`` where mixed precision is allowed (train.py's
    with ``--amp``, the Segmenter's for a bf16-trained model): bf16 autocast on CPUs and CUDA devices with native
    bf16, channels_last."""
    return Runtime(device, resolve_precision("auto", device, amp=True), memory_format(device))


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so that a timing covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's answer)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The bf16-related CPU flags (AVX-512 BF16, AMX) present."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return [flag for flag in ("avx512f", "avx512_bf16", "amx_bf16") if flag in text]


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages (empty where unknown)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    """What the numbers depend on: CPU, cores, threads, versions, load."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_flags": cpu_flags(), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "load_average": load_average()}
    try:
        info["monai"] = metadata.version("monai")  # without importing it (seconds)
    except metadata.PackageNotFoundError:
        pass
    return info


def summarize(times: Sequence[float]) -> dict:
    """min, median and all times of one variant, in seconds."""
    return {"min_s": min(times), "median_s": statistics.median(times), "times_s": list(times)}


def interleaved(variants: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, interleaving them in rotating order after ``warmup`` untimed calls each."""
    names = list(variants)
    for name in names:
        for _ in range(warmup):
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            tic = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - tic)
    return times


def verdict(value: float, target: float, higher_is_better: bool = True) -> str:
    """``met`` or ``MISSED`` for a value against a target."""
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def write_json(name: str, payload: dict, out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``out_dir/<name>.json`` with the machine information added; return its path."""
    path = make_folder(out_dir) / f"{name}.json"
    record = {"benchmark": name, "machine": machine_info(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **payload}
    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table: columns right-aligned except the first."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *(line(r) for r in cells[1:])])


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:,.2f}"
    return str(value)


def print_header(title: str) -> None:
    """A title line with the machine, so a pasted table says where it was measured."""
    m = machine_info()
    print(f"\n== {title} ==")
    print(f"{m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, torch {m['torch']}, "
          f"flags {' '.join(m['cpu_flags']) or 'none'}, load average {m['load_average']}")
    sys.stdout.flush()


def rss_bytes(anonymous: bool = True) -> int:
    """Resident memory from /proc/self/statm; ``anonymous``: less the file-backed pages (the libraries' code, which
    the kernel may drop and re-read at any time), i.e. where tensors live."""
    with open("/proc/self/statm") as handle:
        fields = handle.read().split()
    pages = int(fields[1]) - (int(fields[2]) if anonymous else 0)
    return pages * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of resident memory (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """VmHWM of /proc/self/status: the highest RSS since the process started or :func:`reset_peak_rss`."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
