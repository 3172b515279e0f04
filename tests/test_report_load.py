"""Validation of the metrics files: every problem named with its file, before any work."""

from __future__ import annotations

import json

import pytest
from report_fixtures import make_run

from weaving.errors import ParamError
from weaving.report import MetricsError, load_metrics

METHODS = ["ties", "magmax", "iso_c"]
SETUPS = ["mtl", "cl", "dg"]


@pytest.fixture()
def synthetic():
    return make_run(methods=METHODS)


def _load(root, methods=METHODS, setups=SETUPS, **kwargs):
    return load_metrics(root, ["tiny-clip"], setups, methods, **kwargs)


def test_valid_run_loads_every_record(tmp_path, synthetic):
    run = _load(synthetic.write(tmp_path))
    assert sorted(run.weave) == sorted(synthetic.weave)
    record = run.get("tiny-clip", "mtl", "ties")
    raw = synthetic.weave[("tiny-clip", "mtl", "ties")]
    assert record.tasks == raw["tasks"]
    assert record.sweep == raw["sweep"]
    assert record.weaving["random"]["augmented"] == raw["weaving"]["random"]["augmented"]


def test_lists_are_put_in_canonical_order(tmp_path, synthetic):
    run = _load(synthetic.write(tmp_path), methods=["iso_c", "ties"], setups=["dg", "mtl"])
    assert run.methods == ["ties", "iso_c"]
    assert run.setups == ["mtl", "dg"]


def test_missing_file_is_named(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    missing = root / "tiny-clip" / "weave" / "magmax" / "cl.json"
    missing.unlink()
    with pytest.raises(MetricsError) as error:
        _load(root)
    assert f"{missing}: file is missing" in str(error.value)


def _rewrite(root, setup, method, edit):
    path = root / "tiny-clip" / "weave" / method / f"{setup}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_record_without_weaving_key(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    path = _rewrite(root, "mtl", "ties", lambda d: d.pop("weaving"))
    with pytest.raises(MetricsError, match=r"missing key\(s\) \['weaving'\]") as error:
        _load(root)
    assert str(path) in str(error.value)


def test_task_missing_from_sweep(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    path = _rewrite(root, "dg", "iso_c", lambda d: d["sweep"].pop("optdigits"))
    with pytest.raises(MetricsError, match=r"'sweep' lacks task\(s\) \['optdigits'\]") as error:
        _load(root)
    assert str(path) in str(error.value)


def test_sweep_of_wrong_length(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    _rewrite(root, "cl", "ties", lambda d: d["sweep"]["mnist-s2"].pop())
    with pytest.raises(MetricsError, match=r"'sweep'\['mnist-s2'\] must list 10 accuracies"):
        _load(root)


def test_accuracy_out_of_range(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    _rewrite(root, "mtl", "magmax", lambda d: d["baseline"].update(mnist=101.0))
    with pytest.raises(MetricsError, match=r"'baseline' has non-accuracy value.*\['mnist'\]"):
        _load(root)


def test_missing_configured_pooling_and_pool_over(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    _rewrite(root, "mtl", "ties", lambda d: d["weaving"].pop("random"))
    _rewrite(root, "cl", "ties", lambda d: d["weaving"]["avg"].pop("augmented"))
    with pytest.raises(MetricsError) as error:
        _load(root)
    message = str(error.value)
    assert "lacks pooling 'random'" in message
    assert "'weaving'['avg'] lacks pool_over 'augmented'" in message
    # Not configured: not required.
    run = _load(root, poolings=["avg", "magmax"], pool_overs=["all"])
    assert run.poolings == ["avg", "magmax"]


def test_weaving_lacks_a_task(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    _rewrite(root, "mtl", "ties", lambda d: d["weaving"]["magmax"]["all"].pop("ising"))
    with pytest.raises(MetricsError, match=r"'weaving.magmax.all' lacks task\(s\) \['ising'\]"):
        _load(root)


def test_every_problem_is_reported_at_once(tmp_path, synthetic):
    root = synthetic.write(tmp_path)
    _rewrite(root, "mtl", "ties", lambda d: d.update(model="other"))
    (root / "tiny-clip" / "reference.json").unlink()
    (root / "tiny-clip" / "similarity.json").write_text("{not json")
    with pytest.raises(MetricsError) as error:
        _load(root)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "'model' is 'other' but the file's path says 'tiny-clip'" in message
    assert "reference.json: file is missing" in message
    assert "similarity.json: not valid JSON" in message


def test_malformed_similarity_matrix(tmp_path, synthetic):
    synthetic.similarity["tiny-clip"]["sequential"]["mnist-s2"]["matrix"] = [[1.0, 0.5]]
    with pytest.raises(MetricsError, match=r"'sequential.mnist-s2.matrix' must be a 2x2"):
        _load(synthetic.write(tmp_path))


@pytest.mark.parametrize("kwargs, message", [
    ({"methods": ["ties", "nope"]}, r"unknown methods \['nope'\]; valid: breadcrumbs, dare"),
    ({"setups": ["mtl", "xl"]}, r"unknown setups \['xl'\]; valid: cl, dg, mtl"),
    ({"methods": []}, r"no methods given"),
    ({"poolings": ["random"]}, r"needs pooling 'avg' with pool_over 'all'"),
])
def test_bad_configuration_is_a_param_error(tmp_path, kwargs, message):
    with pytest.raises(ParamError, match=message):
        _load(tmp_path, **kwargs)
