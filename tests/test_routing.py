"""MASS (weaving.routing) against hand cases, explicit projectors and an independent forward of the tiny CLIP."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from weaving import apply_task_vector
from weaving.clip.models import create_model
from weaving.compress import CompressedTaskVector, compress_task_vectors, tsv_merge_compressed
from weaving.compress.experiment import run_compression_experiment
from weaving.errors import InputError, ParamError
from weaving.routing import (
    MASS,
    choose_heads,
    default_layer,
    routing_coefficients,
    select_tasks,
    subspace_residuals,
)
from weaving.routing.experiment import run_mass_experiment

torch.set_num_threads(1)

LAYER = 2
C_FC = f"transformer.resblocks.{LAYER}.mlp.c_fc.weight"


@pytest.fixture(scope="module")
def tiny():
    model = create_model("weaving-tiny-clip", seed=0)
    pretrained = {k: v.detach().clone() for k, v in model.visual.state_dict().items()}
    return model, pretrained


def manual_features(visual: torch.nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    """CLS token of block `layer`'s `ln_2` output, by running the encoder's parts by hand (no hooks)."""
    with torch.no_grad():
        x = visual.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:layer]:
            x = block(x)
        block = visual.transformer.resblocks[layer]
        x = x + block.ls_1(block.attention(q_x=block.ln_1(x)))
        return block.ln_2(x)[:, 0, :]


def random_heads(num_tasks: int, classes: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(classes + t, 128, generator=g), dim=-1) for t in range(num_tasks)]


def random_compressed(pretrained, num_tasks: int = 3, scale: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    taus = [{k: scale * torch.randn(v.shape, generator=g) for k, v in pretrained.items()} for _ in range(num_tasks)]
    return taus, compress_task_vectors(taus)


# ---------------------------------------------------------------------------- the pure steps


def test_residuals_equal_an_explicit_projector_and_vanish_in_the_span():
    rng = np.random.default_rng(0)
    d, ranks = 10, (3, 5)
    bases = torch.zeros(2, 5, d, dtype=torch.float64)
    projectors = []
    for t, k in enumerate(ranks):
        q, _ = np.linalg.qr(rng.standard_normal((d, k)))
        bases[t, :k] = torch.from_numpy(q.T)
        projectors.append(q @ q.T)
    x = rng.standard_normal((4, d))
    residuals = subspace_residuals(torch.from_numpy(x), bases).numpy()
    for t, projector in enumerate(projectors):
        np.testing.assert_allclose(residuals[:, t], np.linalg.norm(x - x @ projector, axis=1), rtol=1e-12)
    in_span = torch.from_numpy(rng.standard_normal((3, 3)) @ bases[0, :3].numpy())
    assert subspace_residuals(in_span, bases)[:, 0].abs().max() < 1e-12


def test_coefficients_are_a_softmax_of_z_scored_negative_residuals():
    coefficients = routing_coefficients(torch.tensor([[1.0, 2.0, 3.0], [4.0, 4.0, 1.0]], dtype=torch.float64))
    # row 1: logits -1, -2, -3: mean -2, unbiased std 1 -> z = (1, 0, -1) / (1 + 1e-6)
    z = [v / (1 + 1e-6) for v in (1.0, 0.0, -1.0)]
    expected = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    np.testing.assert_allclose(coefficients[0].numpy(), expected, rtol=1e-12)
    # row 2: logits -4, -4, -1: mean -3, unbiased std sqrt(3) -> z = (-1, -1, 2) / (sqrt(3) + 1e-6)
    z = [v / (math.sqrt(3) + 1e-6) for v in (-1.0, -1.0, 2.0)]
    expected = [math.exp(v) / sum(math.exp(w) for w in z) for v in z]
    np.testing.assert_allclose(coefficients[1].numpy(), expected, rtol=1e-12)
    assert routing_coefficients(torch.tensor([[7.0]])).item() == 1.0


def test_selection_rules_on_hand_cases():
    c = torch.tensor([
        [0.50, 0.30, 0.15, 0.05, 0.00],   # two pass
        [0.25, 0.21, 0.24, 0.22, 0.08],   # four pass: the top 3
        [0.19, 0.18, 0.17, 0.16, 0.30],   # one passes
        [0.20, 0.20, 0.20, 0.20, 0.20],   # none passes (strictly greater): the argmax, the first
        [0.10, 0.15, 0.19, 0.18, 0.38],
    ])
    assert select_tasks(c, 0.2, 3) == [(0, 1), (0, 2, 3), (4,), (0,), (4,)]
    assert select_tasks(c, 0.2, 2) == [(0, 1), (0, 2), (4,), (0,), (4,)]
    untied = c[[0, 1, 2, 4]]  # row 3 is a five-way tie, where top-3 has no single answer
    assert select_tasks(untied, 0.12, 3) == [(0, 1, 2), (0, 2, 3), (0, 1, 4), (2, 3, 4)]
    assert select_tasks(c, 0.2, 3, top1=True) == [(0,), (0,), (4,), (0,), (4,)]
    assert select_tasks(c, 0.0, 5)[0] == (0, 1, 2, 3)


def test_the_head_of_largest_max_logit_answers():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    heads = [torch.tensor([[0.9, 0.1], [0.2, 0.3]]),  # task 0: max logits 0.9, 0.3, 0.62
             torch.tensor([[0.0, 0.5], [0.7, 0.0], [0.0, 0.95]])]  # task 1: max logits 0.7, 0.95, 0.76
    chosen, classes = choose_heads(embeddings, heads, (0, 1))
    assert chosen.tolist() == [0, 1, 1] and classes.tolist() == [0, 2, 2]
    chosen, classes = choose_heads(embeddings, heads, (1,), logit_scale=100.0)
    assert chosen.tolist() == [1, 1, 1] and classes.tolist() == [1, 2, 2]


def test_default_layers_follow_the_reference():
    assert default_layer(12) == 9 and default_layer(24) == 20 and default_layer(4) == 3 and default_layer(1) == 0


# ---------------------------------------------------------------------------- the module on the tiny CLIP


def test_the_hook_captures_block_ls_mlp_input(tiny):
    model, pretrained = tiny
    _, compressed = random_compressed(pretrained)
    mass = MASS(model, pretrained, compressed, random_heads(3), layer=LAYER)
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    base = create_model("weaving-tiny-clip", seed=0).visual
    base.load_state_dict(apply_task_vector(pretrained, tsv_merge_compressed(compressed)))
    torch.testing.assert_close(mass.route(images).features, manual_features(base, images, LAYER), atol=1e-5, rtol=1e-5)
    routings = mass.route_layers(images, [0, 3])
    torch.testing.assert_close(routings[3].features, manual_features(base, images, 3), atol=1e-5, rtol=1e-5)


def test_one_selected_task_gives_exactly_its_tsvc_model_and_all_tasks_the_base(tiny):
    model, pretrained = tiny
    _, compressed = random_compressed(pretrained)
    mass = MASS(model, pretrained, compressed, random_heads(3))
    for t in range(3):
        state = mass.model_for((t,)).state_dict()
        for key, value in apply_task_vector(pretrained, compressed[t].to_dense()).items():
            assert torch.equal(state[key], value), key
    assert mass.model_for((2, 0, 1)) is mass.base
    expected = apply_task_vector(pretrained, tsv_merge_compressed(compressed[:2]))
    assert all(torch.equal(mass.model_for((1, 0)).state_dict()[k], v) for k, v in expected.items())
    assert mass.stats.model_builds == 4


def subspace_task_vectors(pretrained, groups: list[torch.Tensor], rank: int = 64, seed: int = 0):
    """Task vectors that are zero except block LAYER's c_fc weight, whose row space contains the
    pretrained features of that task's image group (and a random complement)."""
    g = torch.Generator().manual_seed(seed)
    visual = create_model("weaving-tiny-clip", seed=0).visual
    visual.load_state_dict(pretrained)
    taus = []
    for images in groups:
        features = manual_features(visual, images, LAYER).double()
        spanning = torch.cat([features, torch.randn(rank - len(features), 128, generator=g, dtype=torch.float64)])
        q, _ = torch.linalg.qr(spanning.T)
        mixing = torch.randn(512, rank, generator=g, dtype=torch.float64) * torch.linspace(2.0, 1.0, rank)
        tau = {k: torch.zeros_like(v) for k, v in pretrained.items()}
        tau[C_FC] = (mixing @ q.T).float()
        taus.append(tau)
    return taus


def test_inputs_in_one_task_subspace_route_to_it(tiny):
    model, pretrained = tiny
    g = torch.Generator().manual_seed(5)
    groups = [torch.randn(6, 3, 32, 32, generator=g) + shift for shift in (-1.0, 0.0, 1.0)]
    compressed = compress_task_vectors(subspace_task_vectors(pretrained, groups), rank_fraction=0.5)
    mass = MASS(model, pretrained, compressed, random_heads(3), layer=LAYER)
    output = mass(torch.cat(groups))
    truth = torch.arange(3).repeat_interleave(6)
    assert torch.equal(output.routing.coefficients.argmax(dim=1), truth)
    assert output.routing.residuals[torch.arange(18), truth].max() < 1e-3 * output.routing.residuals.max()
    assert all(int(t) in s for t, s in zip(truth, output.selected))
    stats = mass.stats_dict()
    assert stats["images"] == 18 and sum(stats["set_size_histogram"].values()) == 18
    assert stats["argmax_tasks"] == {"task0": 6, "task1": 6, "task2": 6}
    assert stats["passes_per_image"] == 2.0 and stats["routing_pass_fraction"] == pytest.approx(3 / 4)


def test_answers_match_an_independent_forward_and_the_oracle_head(tiny):
    model, pretrained = tiny
    _, compressed = random_compressed(pretrained, num_tasks=4, seed=2)
    heads = random_heads(4, seed=3)
    mass = MASS(model, pretrained, compressed, heads, layer=1, threshold=0.1, max_tasks=2)
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    truth = torch.tensor([0, 1, 2, 3] * 3)
    output = mass(images, tasks=truth)
    visual = create_model("weaving-tiny-clip", seed=0).visual
    for i, chosen in enumerate(output.selected):
        assert 1 <= len(chosen) <= 2
        visual.load_state_dict(apply_task_vector(pretrained, tsv_merge_compressed([compressed[t] for t in chosen])))
        with torch.no_grad():
            embedding = F.normalize(visual(images[i:i + 1]), dim=-1)[0]
        scores = {t: float((heads[t] @ embedding).max()) for t in chosen}
        best = max(scores, key=scores.get)
        assert int(output.heads[i]) == best
        assert int(output.predictions[i]) == int((heads[best] @ embedding).argmax())
        assert int(output.oracle_predictions[i]) == int((heads[int(truth[i])] @ embedding).argmax())
    oracle = MASS(model, pretrained, compressed, heads, layer=1, threshold=0.1, max_tasks=2, oracle_head=True)
    answered = oracle(images, tasks=truth)
    assert torch.equal(answered.predictions, output.oracle_predictions) and torch.equal(answered.heads, truth)
    top1 = MASS(model, pretrained, compressed, heads, layer=1, top1=True)(images)
    assert all(len(s) == 1 for s in top1.selected)
    assert [s[0] for s in top1.selected] == output.routing.coefficients.argmax(dim=1).tolist()


# ---------------------------------------------------------------------------- bad input


def test_bad_options_are_refused_before_any_work(tiny):
    model, pretrained = tiny
    _, compressed = random_compressed(pretrained)
    heads = random_heads(3)
    for threshold in (-0.1, 1.5, float("nan")):
        with pytest.raises(ParamError, match="threshold must be a number in \\[0, 1\\]"):
            MASS(model, pretrained, compressed, heads, threshold=threshold)
    for layer in (4, -1, 1.5):
        with pytest.raises(ParamError, match="layer must be a block index in \\[0, 3\\]"):
            MASS(model, pretrained, compressed, heads, layer=layer)
    with pytest.raises(ParamError, match="empty"):
        MASS(model, pretrained, [], [])
    with pytest.raises(ParamError, match="got 2 heads for 3"):
        MASS(model, pretrained, compressed, heads[:2])
    with pytest.raises(ParamError, match="max_tasks"):
        MASS(model, pretrained, compressed, heads, max_tasks=0)
    with pytest.raises(InputError, match="head of task 'task1'"):
        MASS(model, pretrained, compressed, [heads[0], torch.zeros(3, 64), heads[2]])
    with pytest.raises(InputError, match="no transformer.resblocks to hook"):
        MASS(torch.nn.Linear(3, 3), {}, compressed, heads)
    dense = [CompressedTaskVector({k: f for k, f in c.factors.items() if k != C_FC},
                                  {**c.dense, C_FC: c.reconstruct(C_FC)}, c.rank_fraction) for c in compressed]
    with pytest.raises(InputError, match="is not stored as factors"):
        MASS(model, pretrained, dense, heads, layer=LAYER)
    with pytest.raises(ParamError, match="oracle-head mode needs the true task"):
        MASS(model, pretrained, compressed, heads, oracle_head=True)(torch.zeros(2, 3, 32, 32))


# ---------------------------------------------------------------------------- the stage's library functions


def test_the_experiments_return_consistent_json(tiny):
    model, pretrained = tiny
    taus, _ = random_compressed(pretrained, num_tasks=3, scale=0.02, seed=7)
    names = ["a", "b", "c"]
    g = torch.Generator().manual_seed(8)
    heads = dict(zip(names, random_heads(3, seed=9)))
    caches = {n: {"images": torch.randn(24, 3, 32, 32, generator=g).half(),
                  "labels": torch.randint(0, 5, (24,), generator=g)} for n in names}
    metrics, compressed = run_compression_experiment(model, pretrained, dict(zip(names, taus)), heads, caches,
                                                     rank_fractions=(0.25, 1.0), batch_size=16)
    json.dumps(metrics)
    assert [r["rank_fraction"] for r in metrics["sweep"]] == [0.25, 1 / 3, 1.0]
    full = metrics["sweep"][-1]
    assert full["accuracy"] == pytest.approx(metrics["finetuned"])  # full rank reconstructs the task vectors
    assert metrics["headline"]["storage_ratio"] == pytest.approx(
        sum(c.stored_numbers() for c in compressed.values()) / sum(v.numel() for v in pretrained.values()))
    result = run_mass_experiment(model, pretrained, compressed, heads, caches, finetuned_accuracy=metrics["finetuned"],
                                 layer=1, thresholds=(0.1, 0.5), layers=(0, 3), batch_size=16)
    json.dumps(result)
    assert set(result["accuracy"]) == {"finetuned", "tsv_merge", "tsvc_task_known", "mass", "mass_oracle_head",
                                       "mass_top1"}
    assert result["accuracy"]["tsvc_task_known"] == pytest.approx(metrics["default"]["accuracy"])
    assert sum(result["routing"]["set_size_histogram"].values()) == 72
    confusion = result["routing"]["confusion"]
    assert [confusion[n][n] / 24 * 100 for n in names] == pytest.approx(list(result["routing"]["accuracy"].values()))
    assert [r["threshold"] for r in result["sweeps"]["threshold"]] == [0.1, 0.5]
    assert [r["layer"] for r in result["sweeps"]["layer"]] == [0, 3]
    assert result["routing"]["routing_pass_fraction"] == pytest.approx(0.5)
    for n in names:  # a correct MASS answer needs the true task's head
        assert result["accuracy"]["mass"][n] <= result["routing"]["head_accuracy"][n]
    for values in result["accuracy"].values():
        assert all(0.0 <= v <= 100.0 for v in values.values())
