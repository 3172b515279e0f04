"""weaving.align: specs, permutations, matchers, C2M3, REPAIR, the experiment; checked against
independent computations (explicit permutation matrices, brute force, autograd, hooks)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from align_fixtures import conv_output_statistics, randomize_batch_norm_statistics, state
from torch import nn

from weaving.align import (
    PermutationSpec,
    all_pairs_matching,
    apply_permutation,
    builtin_spec,
    check_models,
    compose,
    cycle_error,
    frank_wolfe_sync_matching,
    invert,
    load_spec,
    match_to_reference,
    merge_many,
    merge_models,
    mlp_spec,
    pairwise_maps_from_frames,
    random_permutation,
    repair,
    resnet_spec,
    save_spec,
    solve_lap,
    sync_gradient,
    sync_objective,
    universe_average,
    weight_matching,
)
from weaving.align.experiment import run_alignment_experiment, train_models
from weaving.align.frank_wolfe import initial_matrices
from weaving.align.models import TrainConfig, build_model, model_spec
from weaving.errors import InputError, ParamError

torch.set_num_threads(1)

MODELS = {
    "mlp": {"width": [7, 6, 5]},
    "resnet-layer": {"width": [4, 6], "norm": "layer"},
    "resnet-batch": {"width": [4, 4, 6], "norm": "batch", "blocks_per_stage": 2},
}


def small_model(kind: str, seed: int) -> nn.Module:
    arch = kind.split("-")[0]
    model = build_model(arch, in_channels=2, image_size=8, num_classes=3, seed=seed, **MODELS[kind])
    if kind == "resnet-batch":  # non-trivial running statistics, so that permuting them matters
        randomize_batch_norm_statistics(model, seed)
    return model.eval()


def inputs(seed: int = 0, n: int = 6) -> torch.Tensor:
    return torch.randn(n, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def load(kind: str, sd: dict[str, torch.Tensor]) -> nn.Module:
    model = small_model(kind, 0)
    model.load_state_dict(sd)
    return model.eval()


def sizes_of(spec: PermutationSpec, sd: dict) -> dict[str, int]:
    return check_models(spec, [sd, sd])


def permuted_copies(spec, sd, count, seed=0):
    sizes = sizes_of(spec, sd)
    g = torch.Generator().manual_seed(seed)
    return [apply_permutation(spec, sd, random_permutation(sizes, g)) for _ in range(count)]


def equal_state(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- specs and permutations

@pytest.mark.parametrize("kind", list(MODELS))
def test_permuted_model_computes_the_same_function(kind):
    model = small_model(kind, 0)
    spec = model_spec(model)
    sd = state(model)
    moved = permuted_copies(spec, sd, 1, seed=3)[0]
    assert not equal_state(moved, sd)
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(load(kind, moved)(x), model(x), rtol=1e-5, atol=1e-5)


def test_apply_permutation_matches_explicit_permutation_matrices():
    sd = state(small_model("mlp", 1))
    spec = mlp_spec(4)
    perm = random_permutation(sizes_of(spec, sd), torch.Generator().manual_seed(5))
    out = apply_permutation(spec, sd, perm)

    def matrix(p):
        return torch.eye(len(p))[p]  # P @ x == x[p]

    p0, p1 = matrix(perm["P_0"]), matrix(perm["P_1"])
    torch.testing.assert_close(out["layer1.weight"], p1 @ sd["layer1.weight"] @ p0.T)
    torch.testing.assert_close(out["layer0.weight"], p0 @ sd["layer0.weight"])
    torch.testing.assert_close(out["layer0.bias"], p0 @ sd["layer0.bias"])
    assert torch.equal(out["layer3.bias"], sd["layer3.bias"])  # output units never move
    back = apply_permutation(spec, out, invert(perm))
    assert equal_state(back, sd)
    other = random_permutation(sizes_of(spec, sd), torch.Generator().manual_seed(6))
    twice = apply_permutation(spec, apply_permutation(spec, sd, perm), other)
    assert equal_state(twice, apply_permutation(spec, sd, compose(perm, other)))


@pytest.mark.parametrize("kind", list(MODELS))
def test_builtin_spec_is_read_from_the_state_dict(kind):
    model = small_model(kind, 0)
    arch = kind.split("-")[0]
    assert builtin_spec(arch, model.state_dict()) == model_spec(model)


def test_norms_share_their_channels_group():
    spec = resnet_spec([4, 8], norm="batch")
    for name in ("stem", "stages.1.0.shortcut"):
        rows = spec.axes[f"{name}.conv.weight"][0]
        for key in ("weight", "bias", "running_mean", "running_var"):
            assert spec.axes[f"{name}.norm.{key}"] == (rows,)
    assert spec.axes["stages.0.0.conv2.weight"][0] == spec.axes["stem.conv.weight"][0]  # identity shortcut
    assert spec.axes["head.weight"] == (None, spec.axes["stages.1.0.conv2.weight"][0])


def test_spec_file_round_trip_and_errors(tmp_path):
    spec = resnet_spec([4, 8])
    path = tmp_path / "spec.json"
    save_spec(path, spec)
    assert load_spec(path) == spec
    obj = json.loads(path.read_text())
    assert obj["format"] == "weaving.align.spec" and obj["axes"]["head.bias"] == [None]
    bad = tmp_path / "bad.json"
    for text, expected in [
        ("{not json", "not a JSON file"),
        (json.dumps({"format": "x", "version": 1, "axes": {"a": ["g"]}}), "'format'"),
        (json.dumps({"format": "weaving.align.spec", "version": 1, "axes": {"a": "g"}}), "must be a list"),
        (json.dumps({"format": "weaving.align.spec", "version": 1, "axes": {"a": [None]}}), "no axis is permuted"),
        (json.dumps({"format": "weaving.align.spec", "version": 1, "axes": {"a": ["g"]}, "extra": 1}), "unknown"),
    ]:
        bad.write_text(text)
        with pytest.raises(InputError, match=expected) as error:
            load_spec(bad)
        assert str(bad) in str(error.value)


# --------------------------------------------------------------------------- bad input

def test_bad_models_are_refused_naming_model_and_key():
    spec = mlp_spec(4)
    a, b = state(small_model("mlp", 0)), state(small_model("mlp", 1))
    names = ["a.safetensors", "b.safetensors"]
    with pytest.raises(ParamError, match="at least 2"):
        check_models(spec, [a], names[:1])
    missing = {k: v for k, v in b.items() if k != "layer2.weight"}
    with pytest.raises(InputError, match=r"b\.safetensors.*'layer2\.weight'"):
        check_models(spec, [a, missing], names)
    extra = {**b, "layer9.weight": torch.zeros(2)}
    with pytest.raises(InputError, match=r"b\.safetensors.*'layer9\.weight' is not in the spec"):
        check_models(spec, [a, extra], names)
    wide = build_model("mlp", in_channels=2, image_size=8, num_classes=3, width=[7, 9, 5], seed=0).state_dict()
    with pytest.raises(InputError, match=r"b\.safetensors: tensor 'layer1\.bias' has shape \[9\], but a\.safetensors has \[6\]"):
        check_models(spec, [a, wide], names)
    nan = {**b, "layer1.bias": b["layer1.bias"].clone()}
    nan["layer1.bias"][0] = float("nan")
    with pytest.raises(InputError, match=r"b\.safetensors: tensor 'layer1\.bias' holds NaN"):
        check_models(spec, [a, nan], names)
    bad_axes = PermutationSpec({**spec.axes, "layer0.bias": ("P_0", None)})
    with pytest.raises(InputError, match=r"a\.safetensors: tensor 'layer0\.bias' has shape \[7\]"):
        check_models(bad_axes, [a, b], names)
    mixed = PermutationSpec({**spec.axes, "layer3.weight": ("P_0", "P_2")})
    with pytest.raises(InputError, match="group 'P_0'"):
        check_models(mixed, [a, b], names)
    with pytest.raises(InputError, match="'layer2.weight'"):
        merge_models("c2m3", spec, [a, missing], names=names)
    with pytest.raises(ParamError, match="unknown merger"):
        merge_models("average", spec, [a, b])


# --------------------------------------------------------------------------- linear assignment and matching

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_assignment_agrees_with_brute_force(n):
    rng = np.random.default_rng(n)
    for _ in range(5):
        score = torch.as_tensor(rng.normal(size=(n, n)))
        best = max(sum(float(score[i, p[i]]) for i in range(n)) for p in itertools.permutations(range(n)))
        found = solve_lap(score)
        assert sorted(found.tolist()) == list(range(n))
        assert math.isclose(sum(float(score[i, found[i]]) for i in range(n)), best, rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_weight_matching_of_one_group_agrees_with_brute_force(n):
    spec = mlp_spec(2)  # one hidden group: the objective is linear in it, one assignment solves it
    g = torch.Generator().manual_seed(n)
    a = {"layer0.weight": torch.randn(n, 4, generator=g), "layer0.bias": torch.randn(n, generator=g),
         "layer1.weight": torch.randn(3, n, generator=g), "layer1.bias": torch.randn(3, generator=g)}
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}

    def similarity(p):
        moved = apply_permutation(spec, b, {"P_0": torch.tensor(p)})
        return sum(float((a[k] * moved[k]).sum()) for k in a)

    best = max(similarity(p) for p in itertools.permutations(range(n)))
    found = weight_matching(spec, a, b, rng=np.random.default_rng(0))
    assert math.isclose(similarity(found["P_0"].tolist()), best, rel_tol=1e-9)


@pytest.mark.parametrize("kind", list(MODELS))
def test_matchers_recover_a_known_permutation(kind):
    sd = state(small_model(kind, 2))
    spec = model_spec(small_model(kind, 2))
    copy = permuted_copies(spec, sd, 1, seed=7)[0]
    found = weight_matching(spec, sd, copy, rng=np.random.default_rng(0))
    assert equal_state(apply_permutation(spec, copy, found), sd)
    result = frank_wolfe_sync_matching(spec, [sd, copy], seed=0)
    maps = pairwise_maps_from_frames(result.perms_to_universe)
    assert equal_state(apply_permutation(spec, copy, maps[(0, 1)]), sd)
    assert equal_state(apply_permutation(spec, sd, maps[(1, 0)]), copy)


@pytest.mark.parametrize("kind", ["mlp", "resnet-layer"])
@pytest.mark.parametrize("anchor_first", [True, False])
def test_c2m3_brings_copies_together_and_is_cycle_consistent(kind, anchor_first):
    sd = state(small_model(kind, 4))
    spec = model_spec(small_model(kind, 4))
    models = [sd, *permuted_copies(spec, sd, 2, seed=11)]
    result = frank_wolfe_sync_matching(spec, models, seed=1, anchor_first=anchor_first)
    optimum = 3 * sum(float((sd[k].double() ** 2).sum()) for k in spec.permuted_keys())  # every pair identical
    assert result.objective_rounded <= optimum * (1 + 1e-12)
    assert all(b >= a for a, b in zip(result.objective_trace, result.objective_trace[1:]))
    assert cycle_error(pairwise_maps_from_frames(result.perms_to_universe), 3)["max"] == 0.0
    if anchor_first:
        assert all(torch.equal(p, torch.arange(len(p))) for p in result.perms_to_universe[0].values())
        universe = [apply_permutation(spec, m, u) for m, u in zip(models, result.perms_to_universe)]
        assert all(equal_state(u, sd) for u in universe)
        assert result.objective_rounded == pytest.approx(optimum, rel=1e-12)


@pytest.mark.parametrize("merger", ["c2m3", "mergemany", "pairwise"])
def test_universe_average_of_permuted_copies_is_the_model(merger):
    model = small_model("resnet-layer", 5)
    spec, sd = model_spec(model), state(model)
    models = [sd, *permuted_copies(spec, sd, 3, seed=13)]
    merged, result = merge_models(merger, spec, models, seed=0)
    in_frame = apply_permutation(spec, sd, result.perms[0])
    for key in sd:
        torch.testing.assert_close(merged[key], in_frame[key], rtol=0, atol=1e-6)
    x = inputs(1)
    with torch.no_grad():
        torch.testing.assert_close(load("resnet-layer", merged)(x), model(x), rtol=1e-4, atol=1e-5)


def test_pairwise_to_reference_keeps_the_reference_and_mergemany_stops():
    spec = mlp_spec(4)
    models = [state(small_model("mlp", s)) for s in range(3)]
    perms = match_to_reference(spec, models, seed=0)
    assert equal_state(apply_permutation(spec, models[0], perms[0]), models[0])
    for other, perm in zip(models[1:], perms[1:]):  # matching never lowers the similarity to the reference
        before = sum(float((models[0][k] * other[k]).sum()) for k in models[0])
        moved = apply_permutation(spec, other, perm)
        assert sum(float((models[0][k] * moved[k]).sum()) for k in models[0]) >= before
    perms, rounds = merge_many(spec, models, seed=0, max_iter=50)
    assert 1 <= rounds < 50


# --------------------------------------------------------------------------- C2M3 objective

def direct_objective(spec, models, matrices):
    """sum_{A<B} sum_key <W_A, P_A^r P_B^r^T W_B (P_A^c P_B^c^T)^T>, written out for <= 2 permuted axes."""
    total = torch.zeros((), dtype=torch.float64)
    for a, b in itertools.combinations(range(len(models)), 2):
        for key, axes in spec.axes.items():
            if all(g is None for g in axes):
                continue
            wa, wb = models[a][key].double(), models[b][key].double()
            maps = [matrices[a][g] @ matrices[b][g].T if g is not None else None for g in axes]
            moved = wb
            if maps[0] is not None:
                moved = torch.einsum("ij,j...->i...", maps[0], moved)
            if len(maps) > 1 and maps[1] is not None:
                moved = torch.einsum("kj,ij...->ik...", maps[1], moved)
            total = total + (wa * moved).sum()
    return total


@pytest.mark.parametrize("kind", ["mlp", "resnet-layer"])
def test_objective_and_gradient_agree_with_autograd_at_a_soft_point(kind):
    spec = model_spec(small_model(kind, 0))
    models = [state(small_model(kind, s)) for s in range(3)]
    sizes = sizes_of(spec, models[0])
    soft = initial_matrices(sizes, 3, seed=3, noise=5.0)
    leaves = [{g: m.clone().requires_grad_(True) for g, m in mm.items()} for mm in soft]
    value = direct_objective(spec, models, leaves)
    value.backward()
    assert math.isclose(sync_objective(spec, models, soft), float(value.detach()), rel_tol=1e-10)
    gradient = sync_gradient(spec, models, soft)
    for x in range(3):
        for g in sizes:
            torch.testing.assert_close(gradient[x][g], leaves[x][g].grad, rtol=1e-9, atol=1e-10)


def test_initialisation_is_seeded_and_doubly_stochastic():
    sizes = {"a": 5, "b": 3}
    first = initial_matrices(sizes, 2, seed=0)
    again = initial_matrices(sizes, 2, seed=0)
    other = initial_matrices(sizes, 2, seed=1)
    for x in range(2):
        for g, m in first[x].items():
            assert torch.equal(m, again[x][g]) and not torch.equal(m, other[x][g])
            torch.testing.assert_close(m.sum(0), torch.ones(sizes[g], dtype=m.dtype))
            torch.testing.assert_close(m.sum(1), torch.ones(sizes[g], dtype=m.dtype))
            assert float(m.min()) > 0


def test_objective_trace_never_decreases_and_cycles_close():
    spec = model_spec(small_model("mlp", 0))
    models = [state(small_model("mlp", s)) for s in range(4)]
    result = frank_wolfe_sync_matching(spec, models, seed=0, max_iter=60)
    trace = result.objective_trace
    assert len(trace) == result.iterations + 1 == len(result.step_sizes) + 1
    assert all(later >= earlier for earlier, later in itertools.pairwise(trace))
    assert trace[-1] > trace[0]
    hard = [{g: torch.eye(len(u[g]), dtype=torch.float64)[torch.argsort(u[g])] for g in u}
            for u in result.perms_to_universe]
    assert math.isclose(sync_objective(spec, models, hard), result.objective_rounded, rel_tol=1e-10)
    errors = cycle_error(pairwise_maps_from_frames(result.perms_to_universe), len(models))
    assert errors == {"max": 0.0, "mean": 0.0, "max_fraction_moved": 0.0, "triples": 4}


def test_cycle_error_of_hand_made_maps():
    identity = {"g": torch.arange(4)}
    swap = {"g": torch.tensor([1, 0, 2, 3])}
    maps = {(0, 1): identity, (1, 2): identity, (0, 2): swap}  # 0 -> 1 -> 2 -> 0 swaps two units
    errors = cycle_error(maps, 3)
    assert errors["max"] == pytest.approx(2.0)  # ||C - I||_F = sqrt(2 * 2 moved units)
    assert errors["max_fraction_moved"] == pytest.approx(0.5)
    assert cycle_error(maps, 2)["max"] is None
    spec = mlp_spec(4)
    models = [state(small_model("mlp", s)) for s in range(3)]
    direct = all_pairs_matching(spec, models, seed=0)
    assert set(direct) == set(itertools.permutations(range(3), 2))
    for (a, b), perm in direct.items():
        assert all(torch.equal(perm[g], torch.argsort(direct[(b, a)][g])) for g in perm)


# --------------------------------------------------------------------------- REPAIR

def test_repair_sets_every_conv_output_to_the_goal_statistics():
    kind = "resnet-layer"
    endpoints = [small_model(kind, s) for s in (0, 1)]
    spec = model_spec(endpoints[0])
    merged = load(kind, universe_average(spec, [state(m) for m in endpoints],
                                         [{g: torch.arange(n) for g, n in sizes_of(spec, state(endpoints[0])).items()}] * 2))
    batches = list(inputs(5, 40).split(16))
    repaired = repair(merged, endpoints, batches, eps=0.0)


    goal = [conv_output_statistics(m, batches) for m in endpoints]
    got = conv_output_statistics(repaired, batches)
    assert set(got) == set(goal[0]) and len(got) == 6  # stem, 2 + 2 block convs, 1 shortcut
    for name, (mean, var) in got.items():
        np.testing.assert_allclose(mean, (goal[0][name][0] + goal[1][name][0]) / 2, atol=1e-5)
        np.testing.assert_allclose(var, (goal[0][name][1] + goal[1][name][1]) / 2, rtol=1e-4, atol=1e-6)
    with pytest.raises(ParamError, match="bias"):
        no_bias = nn.Sequential(nn.Conv2d(2, 3, 3, bias=False))
        repair(no_bias, [no_bias], batches)


# --------------------------------------------------------------------------- training and the experiment

def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=n)
    images = rng.integers(0, 60, size=(n, 8, 8, 1)).astype(np.uint8)
    for i, label in enumerate(labels):  # a bright bar whose position is the class
        images[i, 2 * label:2 * label + 3, :, 0] = 220
    return images, labels


def test_training_is_seeded():
    images, labels = synthetic_images(64, 0)
    kw = {"num_models": 2, "width": [8], "num_classes": 3, "config": TrainConfig(epochs=2, batch_size=16)}
    first = train_models("mlp", images, labels, seed=0, **kw)
    again = train_models("mlp", images, labels, seed=0, **kw)
    assert all(equal_state(a, b) for a, b in zip(first.state_dicts, again.state_dicts))
    assert not equal_state(first.state_dicts[0], first.state_dicts[1])
    with pytest.raises(ParamError, match="num_models"):
        train_models("mlp", images, labels, seed=0, **{**kw, "num_models": 1})
    with pytest.raises(InputError, match="uint8"):
        train_models("mlp", images.astype(np.float32), labels, seed=0, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_a_gpu_matches_the_cpu_up_to_kernel_rounding():
    """The paper profile trains on the GPU: same seeds, same initialisation and batches, so the same models
    up to floating-point rounding of the kernels; state dicts come back on the CPU."""
    images, labels = synthetic_images(64, 0)
    kw = {"num_models": 2, "width": [8], "num_classes": 3, "config": TrainConfig(epochs=2, batch_size=16)}
    cpu = train_models("mlp", images, labels, seed=0, **kw)
    gpu = train_models("mlp", images, labels, seed=0, device="cuda", **kw)
    for a, b in zip(cpu.state_dicts, gpu.state_dicts):
        assert all(b[k].device.type == "cpu" and torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_experiment_end_to_end_on_synthetic_images():
    images, labels = synthetic_images(96, 1)
    test_images, test_labels = synthetic_images(48, 2)
    trained = train_models("resnet", images, labels, num_models=3, seed=0, width=[4, 6], num_classes=3,
                           stem_kernel=2, stem_stride=2, config=TrainConfig(epochs=3, batch_size=32, lr=3e-3))
    out = run_alignment_experiment(trained, test_images, test_labels, repair_images=images, subset_sizes=(2, 3),
                                   seed=0, fw_max_iter=30, barrier_points=3)
    json.dumps(out)
    assert [s["size"] for s in out["subsets"]] == [2, 3]
    three = out["subsets"][1]["mergers"]
    assert set(three) == {"naive", "pairwise", "mergemany", "c2m3"}
    assert three["c2m3"]["cycle_error"]["max"] == 0.0 and three["mergemany"]["cycle_error"]["max"] == 0.0
    assert three["pairwise"]["cycle_error"]["triples"] == 1
    assert "cycle_error" not in three["naive"]
    for record in three.values():
        assert 0 <= record["accuracy"] <= 100 and record["loss"] > 0 and "repair" in record
    trace = three["c2m3"]["objective_trace"]
    assert all(b >= a for a, b in itertools.pairwise(trace))
    assert len(out["path"]["c2m3"]["loss"]) == 3 and out["path"]["lambdas"] == [0.0, 0.5, 1.0]
    with pytest.raises(ParamError, match="subset sizes"):
        run_alignment_experiment(trained, test_images, test_labels, repair_images=images, subset_sizes=(4,))


def test_threaded_assignments_give_the_same_result():
    spec = model_spec(small_model("mlp", 0))
    models = [state(small_model("mlp", s)) for s in range(3)]
    one = frank_wolfe_sync_matching(spec, models, seed=0, max_iter=20)
    two = frank_wolfe_sync_matching(spec, models, seed=0, max_iter=20, workers=2)
    assert one.objective_trace == two.objective_trace
    assert all(torch.equal(a[g], b[g]) for a, b in zip(one.perms_to_universe, two.perms_to_universe) for g in a)
    with pytest.raises(ParamError, match="workers"):
        frank_wolfe_sync_matching(spec, models, seed=0, workers=0)
