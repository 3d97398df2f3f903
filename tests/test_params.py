"""parameters.json: every bad file gives exit code 2 and one line naming the key; good files load."""

from __future__ import annotations

import json

import pytest

from lib.core.errors import UserError
from lib.core.params import load_params, params_from_dict, replace
from tests.conftest import REPO, assert_user_error, run_cli


def test_repository_parameters_load_with_published_values():
    p = load_params(REPO / "parameters.json")
    assert (p.data.height, p.data.width, p.data.n_training, p.data.n_test) == (400, 200, 100, 10)
    assert (p.patches.size, p.patches.per_image, p.patches.folder) == (96, 20, "patches_s96")
    assert p.class_names == ["background", "line", "ellipse"]
    assert [c.index for c in p.classes] == [0, 1, 2]
    assert p.class_colors[0] == (0, 0, 0)
    red, green = p.class_colors[1], p.class_colors[2]
    assert red[0] > 200 and red[1] < 100 and green[1] > 200 and green[0] < 200


def _write_case(path, content):
    """Write a bad case: literal file text, or the repository's parameters changed by a function."""
    if callable(content):
        raw = json.loads((REPO / "parameters.json").read_text())
        content(raw)
        content = json.dumps(raw)
    path.write_text(content)
    return path


BAD_CASES = [
    # (id, file content or mutation, fragments the message must name)
    ("not-json", "{\"data\": {\"seed\": 1,}}", ["invalid JSON", "line 1", "column"]),
    ("unknown-key", lambda r: r["training"].update(epoch=3), ["training.epoch", "unknown key"]),
    ("unknown-group", lambda r: r.update(extra={}), ["extra", "unknown key"]),
    ("wrong-type", lambda r: r["training"].update(epochs="ten"), ["training.epochs", "integer"]),
    ("bool-for-int", lambda r: r["patches"].update(size=True), ["patches.size", "integer"]),
    ("out-of-range", lambda r: r["training"].update(learning_rate=-1),
     ["training.learning_rate: expected a number > 0, got -1"]),  # as the README quotes it
    ("zero-epochs", lambda r: r["training"].update(epochs=0), ["training.epochs", ">= 1"]),
    ("range-reversed", lambda r: r["data"].update(ellipse_radius=[20, 5]), ["data.ellipse_radius", "low <= high"]),
    ("range-length", lambda r: r["data"].update(n_lines=[1]), ["data.n_lines", "2 values"]),
    ("percentiles-reversed", lambda r: r["data"].update(percentiles=[99.5, 0.5]), ["data.percentiles", "low < high"]),
    ("not-an-object", "[]", ["p.json: expected an object at the top level, got []"]),
    ("bad-choice", lambda r: r["inference"].update(blend="max"), ["inference.blend", "'mean'"]),
    ("one-class", lambda r: r.update(classes=r["classes"][:1]), ["classes", "at least 2"]),
    ("class-gap", lambda r: r["classes"][2].update(index=5), ["classes", "indices"]),
    ("colour-range", lambda r: r["classes"][1].update(color=[300, 0, 0]), ["classes[1].color[0]"]),
    ("class-without-name", lambda r: r["classes"][2].pop("name"), ["classes[2].name", "missing or empty"]),
    ("class-names-repeat", lambda r: r["classes"][2].update(name="line"), ["classes", "distinct names"]),
    ("weights-count", lambda r: r["training"].update(class_weights=[1, 2]), ["training.class_weights", "3 weights"]),
    ("weights-all-zero", lambda r: r["training"].update(class_weights=[0, 0, 0]),
     ["training.class_weights", "at least one weight > 0"]),
]


@pytest.mark.parametrize("case", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_parameters_are_refused_in_process(tmp_path, case):
    _, content, fragments = case
    path = _write_case(tmp_path / "p.json", content)
    with pytest.raises(UserError) as err:
        load_params(path)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert str(path) in str(err.value) and ": :" not in str(err.value)


@pytest.mark.parametrize("case", [BAD_CASES[0], BAD_CASES[1], BAD_CASES[3], BAD_CASES[5]],
                         ids=["not-json", "unknown-key", "wrong-type", "out-of-range"])
def test_bad_parameters_stop_the_command_with_exit_2(tmp_path, case):
    _, content, fragments = case
    path = _write_case(tmp_path / "p.json", content)
    result = run_cli("-m", "lib.generate", "--params", str(path), "--out", str(tmp_path / "data"))
    assert_user_error(result, str(path), *fragments)
    assert not (tmp_path / "data").exists()


def test_missing_parameters_file(tmp_path):
    result = run_cli("-m", "lib.generate", "--params", str(tmp_path / "nope.json"), "--out", str(tmp_path / "d"))
    assert_user_error(result, "nope.json", "not found")


def test_missing_keys_take_defaults_and_flags_override():
    p = params_from_dict({"training": {"epochs": 3}})
    assert p.training.epochs == 3 and p.training.learning_rate == 0.01 and p.n_classes == 3
    q = replace(p, "training", learning_rate=0.5, batch_size=None)
    assert q.training.learning_rate == 0.5 and q.training.batch_size == p.training.batch_size
    with pytest.raises(UserError, match="training.batch_size"):
        replace(p, "training", batch_size=0)


def test_the_default_file_is_the_repositorys_parameters_json():
    """Commands without --params read the repository's parameters.json, wherever the module lives."""
    from lib.core.params import DEFAULT_PATH
    from lib.core.provenance import REPO as PROVENANCE_ROOT

    assert DEFAULT_PATH == REPO / "parameters.json" and PROVENANCE_ROOT == REPO
    assert load_params() == load_params(REPO / "parameters.json")


@pytest.mark.parametrize("group, key, value", [
    ("data", "seed", 10**400),  # math.isfinite(int) raised OverflowError
    ("training", "learning_rate", 10**400),
    ("training", "momentum", 10**400),
    ("training", "seed", 2**64),  # beyond torch.manual_seed's range: train.py failed at its start
    ("training", "seed", 2**63),  # DistributedSampler seeds with seed + epoch: 2**64 - 1 failed at the second epoch
])
def test_numbers_beyond_range_are_refused_in_one_line(group, key, value):
    raw = load_params().to_dict()
    raw[group][key] = value
    with pytest.raises(UserError, match=rf"^{group}\.{key}: expected"):
        params_from_dict(raw)


def test_the_largest_seed_is_said_exactly_and_trains_past_its_first_epoch():
    from torch.utils.data import DistributedSampler

    raw = load_params().to_dict()
    raw["training"]["seed"] = 2**63
    with pytest.raises(UserError, match=r"in \[0, 9223372036854775807\], got 9223372036854775808$"):
        params_from_dict(raw)
    sampler = DistributedSampler(range(10), num_replicas=1, rank=0, seed=2**63 - 1)
    sampler.set_epoch(100)
    assert sorted(sampler) == list(range(10))


def test_a_number_of_more_digits_than_python_converts_is_one_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"data": {"seed": 1' + "0" * 5000 + "}}")
    with pytest.raises(UserError, match=r"p\.json: invalid JSON \(Exceeds the limit"):
        load_params(path)
