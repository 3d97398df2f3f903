"""Shared fixtures: tiny parameter sets and data sets, and a runner for the real commands."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks.common import child_env  # noqa: E402  (a started command's environment: one home, the benchmarks')
from lib.core.params import load_params, params_from_dict  # noqa: E402
from model import UNet  # noqa: E402
from model.checkpoint import build_checkpoint, save_checkpoint  # noqa: E402

_DEFAULT = load_params(REPO / "parameters.json")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: one thread each, here and in the commands the tests run, or the workers
    # oversubscribe the cores and PyTorch gets many times slower
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (a script or ``-m module``) from the repository, capturing its output."""
    full_env = child_env(**(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_main(*args: str) -> subprocess.CompletedProcess:
    """Run a command as :func:`run_cli` would, with the same arguments, but by calling its ``main(argv)`` in this
    process: its exit status (``main``'s return value, or the code of the ``SystemExit`` it raises), stdout, and
    stderr with any warning it raised appended, as a Python process would print it.

    As a process, a command spends 2–3 s importing torch on 2 cores (train.py 1.8 s more, for the compiler that
    the first optimiser call imports): most of a refused command's time and much of a tiny pipeline's. So the
    bad-input table and the real-data, own-data and large-image pipelines call ``main``; the cases that still run
    as processes (one bad input per command, training end to end, kills, torchrun) cover what only a process shows:
    the ``__main__`` route and its exit, and warnings at import. Any other exception propagates, as a traceback
    would end a process."""
    name, argv = (args[1], list(args[2:])) if args[0] == "-m" else (args[0].removesuffix(".py"), list(args[1:]))
    main = importlib.import_module(name).main
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            code = main(argv) or 0
        except SystemExit as stop:
            code = stop.code
    for w in caught:
        err.write(warnings.formatwarning(w.message, w.category, w.filename, w.lineno))
    return subprocess.CompletedProcess([name, *argv], code, out.getvalue(), err.getvalue())


def file_digests(folder: Path, pattern: str = "*") -> dict[str, str]:
    """SHA-256 of every file under ``folder`` matching ``pattern``, by path relative to ``folder``."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob(pattern)) if p.is_file()}


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2, one line on stderr naming the culprit, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and "%|" not in ln]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def recoloured(params, index: int = 1, color: tuple[int, int, int] = (0, 0, 255)):
    """``params`` with class ``index`` in another colour."""
    raw = params.to_dict()
    raw["classes"][index]["color"] = list(color)
    return params_from_dict(raw)


def constant_checkpoint(path: Path, label: int, n_classes: int = 3, n_channels: int = 1) -> Path:
    """A checkpoint whose U-Net predicts ``label`` everywhere (zero last-layer weights, a large bias)."""
    model = UNet(n_channels, n_classes, 4)
    with torch.no_grad():
        model.outc.conv.weight.zero_()
        model.outc.conv.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), n_classes).float() * 20)
    params = _DEFAULT.to_dict()
    params["patches"]["size"] = 48
    params["model"]["base_channels"] = 4
    params["classes"] = [{"name": f"class{i}", "index": i, "color": [i, 255 - i, i]} for i in range(n_classes)] \
        if n_classes != 3 else params["classes"]
    save_checkpoint(path, build_checkpoint(model, params_from_dict(params),
                                           {"mean": [0.5] * n_channels, "std": [0.2] * n_channels}))
    return path


def random_checkpoint(path: Path, seed: int = 3) -> Path:
    """A checkpoint of a random-weight U-Net (1 channel, 3 classes, window 48) whose labels follow the image, not a
    constant: for comparing inference routes on real label maps without training."""
    constant_checkpoint(path, 0)
    state = torch.load(path, weights_only=True)
    torch.manual_seed(seed)
    model = UNet(1, 3, 4)
    with torch.no_grad():
        model.outc.conv.weight.normal_(0, 10.0)
    state["model_state"] = model.state_dict()
    save_checkpoint(path, state)
    return path


def tiny_params_dict(root: Path, **groups: dict) -> dict:
    """parameters.json with a small data set under ``root`` (fast tests), with optional per-group changes."""
    raw = json.loads((REPO / "parameters.json").read_text())
    raw["data"].update(root=str(root), n_training=4, n_test=2, height=120, width=72, line_length=[20, 72])
    raw["patches"].update(size=48, per_image=3)
    raw["model"].update(base_channels=4)
    # on the CPU also where a GPU is present: the tests compare runs bit for bit, which a GPU's kernels do not
    # promise; the GPU's own behaviour has its tests (tests/test_cuda_graphs.py, the CUDA cases of test_losses.py)
    raw["training"].update(folder="patches_s48", epochs=2, batch_size=8, checkpoints_dir=str(root / "checkpoints"),
                           runs_dir=str(root / "runs"), figure_patches=2, val_fraction=0.25, device="cpu")
    raw["inference"].update(batch_size=8)
    for group, changes in groups.items():
        raw[group].update(changes)
    return raw


def write_params(path: Path, raw: dict) -> Path:
    path.write_text(json.dumps(raw, indent=1))
    return path


@pytest.fixture
def tiny_params_file(tmp_path: Path) -> Path:
    return write_params(tmp_path / "params.json", tiny_params_dict(tmp_path / "data"))


@pytest.fixture
def tiny_params(tiny_params_file: Path):
    return load_params(tiny_params_file)


@pytest.fixture(scope="session")
def tiny_patches(tmp_path_factory) -> tuple[Path, Path]:
    """A generated and prepared tiny data set, shared by the tests: ``(params file, data root)``."""
    from lib.generate import generate_dataset
    from lib.prepare import prepare_patches

    root = tmp_path_factory.mktemp("tiny")
    raw = tiny_params_dict(root / "data")
    raw["data"]["n_training"] = 8
    params_file = write_params(root / "params.json", raw)
    params = load_params(params_file)
    train, _ = generate_dataset(params, progress=False)
    prepare_patches(train, root / "data" / "patches_s48", params, progress=False)
    return params_file, root / "data"
