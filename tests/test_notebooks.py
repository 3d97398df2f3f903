"""The three notebooks run headless (papermill) on a tiny data set and show their figures and numbers."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, run_cli, tiny_params_dict, write_params

nbformat = pytest.importorskip("nbformat")
papermill = pytest.importorskip("papermill")

NOTEBOOKS = REPO / "notebooks"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread in the kernels and train.py: the tensors are tiny, and several threads contending with other
    work on a small machine make PyTorch many times slower."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def run_notebook(name: str, out_dir: Path, **parameters) -> dict:
    """Execute ``notebooks/<name>`` with the given parameters (cwd: notebooks/, as in Jupyter); return the result."""
    output = out_dir / name
    papermill.execute_notebook(str(NOTEBOOKS / name), str(output), parameters=parameters, cwd=str(NOTEBOOKS),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(output, as_version=4)


def outputs(nb: dict) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]


def n_figures(nb: dict) -> int:
    return sum("image/png" in out.get("data", {}) for out in outputs(nb))


def text(nb: dict) -> str:
    """Everything the notebook printed (stdout and text results), stderr (progress bars) left out."""
    parts = []
    for out in outputs(nb):
        if out.output_type == "stream" and out.name == "stdout":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Path, Path]:
    """``(params file, data root)`` of a tiny configuration in a temporary folder."""
    root = tmp_path_factory.mktemp("notebooks")
    raw = tiny_params_dict(root / "data")
    raw["training"].update(checkpoints_dir=str(root / "checkpoints"), runs_dir=str(root / "runs"))
    return write_params(root / "params.json", raw), root / "data"


@pytest.fixture(scope="module")
def generated(workspace, tmp_path_factory) -> dict:
    params_file, data_root = workspace
    return run_notebook("image_generation.ipynb", tmp_path_factory.mktemp("out"), params_file=str(params_file),
                        data_root=str(data_root), n_training=4, n_test=2, seed=1, overwrite=True, n_show=2)


@pytest.fixture(scope="module")
def prepared(workspace, generated, tmp_path_factory) -> dict:
    params_file, data_root = workspace
    return run_notebook("image_preparation.ipynb", tmp_path_factory.mktemp("out"), params_file=str(params_file),
                        data_root=str(data_root), patch_size=48, per_image=3, seed=2, overwrite=True, n_show=6)


@pytest.fixture(scope="module")
def checkpoint(workspace, prepared) -> Path:
    params_file, data_root = workspace
    result = run_cli("train.py", "--params", str(params_file), "-e", "1", "-b", "4", "--base-channels", "4",
                     "-f", str(data_root / "patches_s48"), "--name", "nb", "--device", "cpu",
                     "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    ckpt = data_root.parent / "checkpoints" / "nb" / "best.pth"
    assert ckpt.is_file(), sorted(p.name for p in ckpt.parent.iterdir())
    return ckpt


@pytest.mark.parametrize("given,configured,expected", [
    (None, "data", "ROOT/data"),  # parameters.json's relative root: the repository's data/, as the commands see it
    (None, "/abs/mydata", "/abs/mydata"),  # an absolute data.root stays as it is
    ("../data", "elsewhere", "../data"),  # a data_root given to the notebook wins, relative to notebooks/
])
def test_a_notebook_takes_its_data_folder_from_the_parameters_file_unless_given(given, configured, expected):
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        from _repo import ROOT, resolve_data_root
    finally:
        sys.path.remove(str(NOTEBOOKS))
    assert resolve_data_root(given, configured) == Path(expected.replace("ROOT", str(ROOT)))


def test_committed_notebooks_are_clean():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert nb.metadata.kernelspec.name == "python3", path.name
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name}: outputs not cleared"
        assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1, path.name


def test_image_generation(generated, workspace):
    _, data_root = workspace
    assert len(list((data_root / "images_training" / "images").glob("*.png"))) == 4
    assert len(list((data_root / "images_test" / "masks").glob("*.png"))) == 2
    assert n_figures(generated) >= 1
    shares = [float(v) for v in re.findall(r"(\d+\.\d+) %", text(generated))]
    assert len(shares) == 3 and abs(sum(shares) - 100) < 0.1, text(generated)


def test_image_preparation(prepared, workspace):
    _, data_root = workspace
    folder = data_root / "patches_s48"
    assert len(list((folder / "images").glob("p*.png"))) == 4 * 3 * 4  # images x windows x flips
    assert n_figures(prepared) >= 2  # the grid and the flips
    printed = text(prepared)
    assert "48 patches of 48x48" in printed
    assert "file,source,top,left,flip,rot90" in printed
    assert "4 variants, all equal to apply_augmentation of the original: True" in printed


def test_inference(checkpoint, workspace, tmp_path):
    """The notebook finds the newest checkpoint under training.checkpoints_dir by itself, and its numbers are
    predict.py's on the same images and window settings."""
    params_file, data_root = workspace
    nb = run_notebook("inference.ipynb", tmp_path, checkpoint=None, params_file=str(params_file),
                      data_root=str(data_root), example=1, overlap=0.25, blend="gaussian", tta=True,
                      device="cpu", precision="fp32")
    assert n_figures(nb) >= 1  # the six-panel figure
    printed = text(nb)
    assert f"{checkpoint}: classes" in printed
    assert "segmented 2 test images" in printed
    assert "i1: mIoU" in printed
    result = run_cli("predict.py", "--checkpoint", str(checkpoint), "--input", str(data_root / "images_test"),
                     "--masks", str(data_root / "images_test" / "masks"), "--output", str(tmp_path / "pred"),
                     "--metrics", str(tmp_path / "m.json"), "--overlap", "0.25", "--blend", "gaussian", "--tta",
                     "--device", "cpu", "--precision", "fp32", "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = json.loads((tmp_path / "m.json").read_text())
    for name in ("background", "line", "ellipse"):
        value = expected["iou"][name]
        assert re.search(rf"^{name}\s+{'nan' if value is None else f'{value:.4f}'}$", printed, re.MULTILINE), printed
    shown = "nan" if expected["miou"] is None else f"{expected['miou']:.4f}"
    assert re.search(rf"^mIoU\s+{shown}\s+\(one confusion matrix over 2 images\)", printed, re.MULTILINE), printed
