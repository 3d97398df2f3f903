"""Replay a whole call as one CUDA graph: for a small image on a GPU, launching the model's and the stitching's
kernels one at a time from Python takes longer than running them."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch


class _HostCopies:
    """The host tensors a call copies to the device, pinned: recorded in the last eager call before a capture (a
    capture may not allocate pinned memory), copied from again, in the same order, by the capture, and kept with the
    graph, which copies from them at each replay."""

    def __init__(self) -> None:
        self.pinned: list[torch.Tensor] = []
        self.used = 0

    def copy(self, tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
        if not torch.cuda.is_current_stream_capturing():
            self.pinned.append(tensor.pin_memory())
            return self.pinned[-1].to(device, non_blocking=True)
        if self.used == len(self.pinned) or not _same(self.pinned[self.used], tensor):
            raise RuntimeError("to_device: the captured call copies other host tensors than the call before it")
        self.used += 1
        return self.pinned[self.used - 1].to(device, non_blocking=True)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


# the host copies of the GraphedCall now recording or capturing (see to_device)
_host_copies: _HostCopies | None = None


@contextlib.contextmanager
def _recording(copies: _HostCopies | None) -> Iterator[None]:
    global _host_copies
    previous, _host_copies = _host_copies, copies
    try:
        yield
    finally:
        _host_copies = previous


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor.to(device)``, also in a call that :class:`GraphedCall` captures.

    A copy from pageable host memory waits for the device, which a capture forbids, and a graph copies from the same
    host memory at each replay. So in the call before a capture the tensor is pinned and kept, and the capture
    copies from that pinned tensor (see :class:`_HostCopies`).

    Raises:
        RuntimeError: a host tensor copied inside a capture not made by :class:`GraphedCall`, or one that the call
            before the capture did not copy.
    """
    if device.type != "cuda" or tensor.device.type == "cuda":
        return tensor.to(device)
    if _host_copies is not None:
        return _host_copies.copy(tensor, device)
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("to_device: a host copy inside a CUDA graph capture not made by GraphedCall")
    return tensor.to(device)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: torch.Tensor
    outputs: tuple[torch.Tensor, ...]
    host_copies: list[torch.Tensor]  # held for the graph, which copies from them at each replay


class GraphedCall:
    """``fn(x)`` captured as a CUDA graph once per shape and type of ``x``, then replayed: the same kernels on the
    same addresses, launched at once.

    ``fn`` must take one CUDA tensor and return a tuple of CUDA tensors, read nothing from the host that changes
    between calls (host constants go through :func:`to_device`) and wait for nothing (no ``.item()``). Its first
    calls for a new shape run eagerly on a side stream (libraries initialised, memory allocated), then one call is
    captured. Each graph keeps the memory of a call; the ``max_graphs`` most recently used are kept. A capture that
    fails raises and caches nothing. Not for use from several threads at once (captures record host copies in
    module state).

    Args:
        fn: the call to replay.
        max_graphs: the shapes whose graphs are kept.
        warmup: eager calls before the capture.
    """

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]], max_graphs: int = 4,
                 warmup: int = 2) -> None:
        if max_graphs < 1 or warmup < 1:
            raise ValueError(f"max_graphs and warmup must be at least 1, got {max_graphs} and {warmup}")
        self.fn, self.max_graphs, self.warmup = fn, max_graphs, warmup
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()

    def _capture(self, x: torch.Tensor) -> _Graph:
        inputs = x.clone()
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        copies = _HostCopies()
        with torch.cuda.stream(side):
            for k in range(self.warmup):
                with _recording(copies if k == self.warmup - 1 else None):
                    self.fn(inputs)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with _recording(copies), torch.cuda.graph(graph):
            outputs = self.fn(inputs)
        if copies.used != len(copies.pinned):
            raise RuntimeError("to_device: the captured call copies fewer host tensors than the call before it")
        return _Graph(graph, inputs, tuple(outputs), copies.pinned)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``fn(x)``: new tensors (copies of the graph's outputs), as an eager call would give them.

        Raises:
            ValueError: ``x`` is not on a CUDA device.
        """
        if x.device.type != "cuda":
            raise ValueError(f"GraphedCall needs a CUDA tensor, got one on {x.device}")
        key = (tuple(x.shape), x.dtype, x.device)
        entry = self.graphs.pop(key, None)
        if entry is None:
            entry = self._capture(x)
            while len(self.graphs) >= self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs[key] = entry
        entry.inputs.copy_(x)
        entry.graph.replay()
        return tuple(out.clone() for out in entry.outputs)
