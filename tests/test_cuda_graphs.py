"""CUDA graphs of the sliding-window call: the same results as eager calls, for every image size and option.

The graph tests need a CUDA device (they run on the GPU machine: ``pytest tests/test_cuda_graphs.py``); the checks
of options run everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lib.core.cuda_graphs import GraphedCall, to_device
from lib.core.imageio import ImageRows
from lib.core.inference import sliding_window_predict
from lib.core.normalization import compute_normalization
from lib.segmenter import Segmenter
from model.checkpoint import load_checkpoint, save_checkpoint
from model.unet_model import UNet
from tests.conftest import file_digests, random_checkpoint, run_main

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_to_device_outside_a_capture_is_a_plain_copy():
    x = torch.arange(5.0)
    assert torch.equal(to_device(x, torch.device("cpu")), x)


@pytest.mark.parametrize("kwargs", [{"max_graphs": 0}, {"warmup": 0}])
def test_graphed_call_options_are_checked_up_front(kwargs):
    with pytest.raises(ValueError, match="at least 1"):
        GraphedCall(lambda x: (x,), **kwargs)


def test_graphed_call_refuses_a_host_tensor():
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        GraphedCall(lambda x: (x,))(torch.zeros(2))


def _model(channels: int = 1, classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet(channels, classes, 4).eval().cuda().to(memory_format=torch.channels_last)


# (name, C×H×W, options of sliding_window_predict)
CASES = [
    ("smaller-than-a-window", (1, 50, 70), {}),
    ("one-batch", (1, 200, 400), {}),
    ("several-batches-gaussian", (1, 300, 500), {"blend": "gaussian", "batch_size": 8}),
    ("flips-bf16", (3, 130, 260), {"tta": True, "precision": "bf16"}),
    ("column-blocks", (1, 140, 420), {"block_width": 150}),
]


@cuda
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_graph_replays_give_the_eager_result_exactly(case):
    _, shape, options = case
    model = _model(shape[0])
    options = {"memory_format": torch.channels_last, **options}
    graphed = GraphedCall(lambda x: sliding_window_predict(model, x, **options))
    for seed in range(3):  # the capture, then replays on new contents
        image = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).cuda()
        expected = sliding_window_predict(model, image, **options)
        got = graphed(image)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))


@cuda
def test_results_survive_later_calls_and_evicted_graphs_are_captured_again():
    model = _model()
    graphed = GraphedCall(lambda x: sliding_window_predict(model, x, memory_format=torch.channels_last),
                          max_graphs=1)
    images = [torch.randn(1, h, w, generator=torch.Generator().manual_seed(h)).cuda()
              for h, w in ((100, 200), (120, 130), (100, 200))]
    results = [graphed(image) for image in images]  # each shape evicts the other's graph
    assert len(graphed.graphs) == 1
    for image, (probabilities, labels) in zip(images, results):
        expected_p, expected_l = sliding_window_predict(model, image, memory_format=torch.channels_last)
        assert torch.equal(probabilities, expected_p) and torch.equal(labels, expected_l)


@cuda
def test_a_host_copy_inside_a_capture_not_made_by_graphed_call_is_refused():
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="not made by GraphedCall"), torch.cuda.graph(graph):
        to_device(torch.ones(3), torch.device("cuda"))


@cuda
def test_a_call_that_copies_other_host_tensors_each_time_is_not_captured():
    def fn(x):
        return (x + to_device(torch.rand(3), x.device),)  # new host values at each call: a graph would freeze one

    with pytest.raises(RuntimeError, match="other host tensors"):
        GraphedCall(fn)(torch.zeros(3, device="cuda"))


@cuda
@pytest.mark.parametrize("mode", ["zscore", "image"])
def test_predict_with_cuda_graphs_writes_the_same_masks_and_probabilities(tmp_path, mode):
    checkpoint = random_checkpoint(tmp_path / "c.pth")
    state = load_checkpoint(checkpoint)
    # image mode: each image's own statistics, gathered over blocks of 1024² pixels on both routes
    state["normalization"] = compute_normalization(torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8), mode)
    save_checkpoint(checkpoint, state)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(((30, 40), (60, 80), (200, 400), (300, 310), (1100, 200), (1300, 1100))):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)).save(images / f"i{i}.png")
    for flags, out in (((), "eager"), (("--cuda-graphs",), "graphs")):
        result = run_main("predict.py", "--checkpoint", str(checkpoint), "--input", str(images), "--output",
                          str(tmp_path / out), "--device", "cuda", "--save-probabilities", "--quiet", *flags)
        assert result.returncode == 0, result.stderr
    assert file_digests(tmp_path / "eager") == file_digests(tmp_path / "graphs")


@cuda
@pytest.mark.parametrize("limit, graphed", [(16, True), (0.05, False)])
def test_only_images_up_to_the_limit_go_through_a_graph(tmp_path, monkeypatch, limit, graphed):
    from lib import segmenter as segmenter_module

    monkeypatch.setattr(segmenter_module, "GRAPHED_MEGAPIXELS", limit)
    path = tmp_path / "i.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 310), dtype=np.uint8)).save(path)
    segmenter = Segmenter.from_checkpoint(random_checkpoint(tmp_path / "c.pth"), "cuda", cuda_graphs=True)
    with ImageRows(path) as source:
        got = list(segmenter.predict_bands(source, "i.png"))
    assert sum(labels.numel() for *_, labels in got) == 300 * 310
    assert (segmenter._graph_call is not None) == graphed


def test_a_failed_capture_is_one_line_naming_the_image(tmp_path, monkeypatch):
    from lib.core import cuda_graphs
    from lib.core.errors import UserError

    def fail(self, x):
        raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    monkeypatch.setattr(cuda_graphs.GraphedCall, "__call__", fail)
    segmenter = Segmenter.from_checkpoint(random_checkpoint(tmp_path / "c.pth"), "cpu", "fp32")
    segmenter.cuda_graphs = True  # on CPU only to reach the error's wording: the capture itself is mocked
    with pytest.raises(UserError, match=r"^i7.png: --cuda-graphs: .*operation not permitted when stream is "
                                        r"capturing\); run without --cuda-graphs$"):
        segmenter.predict(np.zeros((60, 60), np.uint8), "i7.png")


@cuda
def test_a_call_that_waits_on_the_device_is_refused_in_one_line(tmp_path, monkeypatch):
    from lib import segmenter as segmenter_module
    from lib.core.errors import UserError

    def waits(model, x, **options):
        x.sum().item()  # a sync: forbidden in a capture
        return sliding_window_predict(model, x, **options)

    monkeypatch.setattr(segmenter_module, "sliding_window_predict", waits)
    segmenter = Segmenter.from_checkpoint(random_checkpoint(tmp_path / "c.pth"), "cuda", cuda_graphs=True)
    with pytest.raises(UserError, match="i0.png: --cuda-graphs: the sliding window could not be captured"):
        segmenter.predict(np.zeros((60, 60), np.uint8), "i0.png")


@cuda
def test_another_model_gets_new_graphs(tmp_path):
    segmenter = Segmenter.from_checkpoint(random_checkpoint(tmp_path / "a.pth", seed=1), "cuda", cuda_graphs=True)
    other = Segmenter.from_checkpoint(random_checkpoint(tmp_path / "b.pth", seed=2), "cuda")
    image = np.random.default_rng(0).integers(0, 256, (100, 120), dtype=np.uint8)
    segmenter.predict(image)
    segmenter.model = other.model
    assert torch.equal(segmenter.predict(image)[0], other.predict(image)[0])
