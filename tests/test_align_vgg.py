"""The VGG of the alignment model zoo (C2M3's VGG16): its function under permutations, its spec, matching, REPAIR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from align_fixtures import conv_output_statistics, randomize_batch_norm_statistics, state
from torch import nn

from weaving.align import (
    apply_permutation,
    builtin_spec,
    check_models,
    frank_wolfe_sync_matching,
    pairwise_maps_from_frames,
    random_permutation,
    repair,
    universe_average,
    vgg_spec,
    weight_matching,
)
from weaving.align.experiment import run_alignment_experiment, train_models
from weaving.align.models import VGG, TrainConfig, build_model, model_spec
from weaving.errors import ParamError

torch.set_num_threads(1)

# tiny widths, the VGG16 stage structure (2, 2, 3, 3, 3 convs) kept; 16x16 inputs reach 1x1 after the 5 pools
TINY = {"width": [3, 4, 4, 5, 5], "convs_per_stage": [2, 2, 3, 3, 3], "classifier_width": 6}


def tiny_vgg(seed: int, norm: str = "layer", image_size: int = 16) -> nn.Module:
    model = build_model("vgg", in_channels=2, image_size=image_size, num_classes=3, norm=norm, seed=seed, **TINY)
    if norm == "batch":  # non-trivial running statistics, so that permuting them matters
        randomize_batch_norm_statistics(model, seed)
    return model.eval()


def x_batch(seed: int = 0, n: int = 5, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 2, size, size, generator=torch.Generator().manual_seed(seed))


def hand_permuted(sd: dict[str, torch.Tensor], perms: list[torch.Tensor], dense: list[torch.Tensor]) -> dict:
    """Re-index a VGG state dict by hand, without the spec: conv ``i``'s output channels by ``perms[i]``
    (rows of its weight and bias, its norm's vectors; the columns of the next conv or of classifier.0),
    hidden linear ``j``'s units by ``dense[j]``."""
    out = {k: v.clone() for k, v in sd.items()}
    for i, p in enumerate(perms):
        out[f"features.{i}.conv.weight"] = out[f"features.{i}.conv.weight"][p]
        out[f"features.{i}.conv.bias"] = out[f"features.{i}.conv.bias"][p]
        for name in ("weight", "bias", "running_mean", "running_var"):
            key = f"features.{i}.norm.{name}"
            if key in out:
                out[key] = out[key][p]
        nxt = f"features.{i + 1}.conv.weight" if i + 1 < len(perms) else "classifier.0.weight"
        out[nxt] = out[nxt][:, p]
    for j, p in enumerate(dense):
        out[f"classifier.{j}.weight"] = out[f"classifier.{j}.weight"][p]
        out[f"classifier.{j}.bias"] = out[f"classifier.{j}.bias"][p]
        out[f"classifier.{j + 1}.weight"] = out[f"classifier.{j + 1}.weight"][:, p]
    return out


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_vgg_permuted_by_hand_and_by_its_spec_computes_the_same_function(norm):
    model = tiny_vgg(0, norm)
    sd = state(model)
    g = torch.Generator().manual_seed(3)
    convs = [model.features[i].conv.out_channels for i in range(13)]
    perms = [torch.randperm(n, generator=g) for n in convs]
    dense = [torch.randperm(6, generator=g) for _ in range(2)]
    by_hand = hand_permuted(sd, perms, dense)
    spec = model_spec(model)
    by_spec = apply_permutation(spec, sd, {**{f"P_conv{i}": p for i, p in enumerate(perms)},
                                           "P_dense0": dense[0], "P_dense1": dense[1]})
    assert set(by_spec) == set(by_hand) and all(torch.equal(by_spec[k], by_hand[k]) for k in sd)
    assert any(not torch.equal(by_hand[k], sd[k]) for k in sd)
    other = tiny_vgg(0, norm)
    other.load_state_dict(by_hand)
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_vgg16_spec_names_every_key_with_one_length_per_group():
    """The full-size VGG16 (no forward pass): the spec lists exactly the model's keys, and each group's
    axes have the length of the layer that produces its units, written out here from the VGG16 table."""
    model = build_model("vgg", in_channels=3, image_size=32, num_classes=10, width=[64, 128, 256, 512, 512])
    sd = model.state_dict()
    spec = model_spec(model)
    assert set(spec.axes) == set(sd)
    assert all(len(spec.axes[k]) == sd[k].ndim for k in sd)
    sizes = check_models(spec, [sd, sd])
    vgg16 = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert sizes == {**{f"P_conv{i}": n for i, n in enumerate(vgg16)}, "P_dense0": 512, "P_dense1": 512}
    assert spec.axes["features.0.conv.weight"] == ("P_conv0", None, None, None)  # image channels never move
    assert spec.axes["classifier.0.weight"] == ("P_dense0", "P_conv12")
    assert spec.axes["classifier.2.weight"] == (None, "P_dense1") and spec.axes["classifier.2.bias"] == (None,)
    assert builtin_spec("vgg", sd) == spec
    # parameter count of the reference's VGG16 (conv 3x3 + bias, a per-channel norm weight and bias, classifier
    # 512-512-512-10), computed from its layer table
    chans = [3, *vgg16]
    convs = sum(9 * a * b + b + 2 * b for a, b in zip(chans, chans[1:]))
    linear = (512 * 512 + 512) * 2 + 512 * 10 + 10
    assert sum(p.numel() for p in model.parameters()) == convs + linear


def test_vgg_spec_of_batch_norm_permutes_the_running_statistics():
    spec = vgg_spec(3, norm="batch")
    assert spec.axes["features.1.norm.running_var"] == ("P_conv1",)
    assert spec.axes["features.1.norm.num_batches_tracked"] == ()
    assert builtin_spec("vgg", state(tiny_vgg(0, "batch"))) == model_spec(tiny_vgg(0, "batch"))


@pytest.mark.parametrize("size", [28, 32])
def test_vgg16_takes_mnist_and_cifar_sizes_down_to_one_pixel(size):
    model = build_model("vgg", in_channels=1, image_size=size, num_classes=26, seed=0, **TINY)
    with torch.no_grad():
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 26)
    with pytest.raises(ParamError, match="image_size 64"):
        build_model("vgg", in_channels=1, image_size=64, num_classes=26, **TINY)
    with pytest.raises(ParamError, match="one positive conv count per stage"):
        VGG(widths=[4, 4], convs_per_stage=[1])


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_matchers_recover_a_random_permutation_of_a_small_vgg(norm):
    model = tiny_vgg(2, norm)
    spec = model_spec(model)
    sd = state(model)
    sizes = check_models(spec, [sd, sd])
    pi = random_permutation(sizes, torch.Generator().manual_seed(7))
    moved = apply_permutation(spec, sd, pi)
    found = weight_matching(spec, sd, moved, rng=np.random.default_rng(0))
    back = apply_permutation(spec, moved, found)
    assert all(torch.equal(back[k], sd[k]) for k in sd)
    # the permutation itself: found undoes pi in every group
    assert all(torch.equal(pi[g][found[g]], torch.arange(n)) for g, n in sizes.items())
    result = frank_wolfe_sync_matching(spec, [sd, moved], seed=0)
    maps = pairwise_maps_from_frames(result.perms_to_universe)
    again = apply_permutation(spec, moved, maps[(0, 1)])
    assert all(torch.equal(again[k], sd[k]) for k in sd)


def test_repair_of_a_merged_vgg_sets_every_conv_output_to_the_goal():
    endpoints = [tiny_vgg(s) for s in (0, 1)]
    spec = model_spec(endpoints[0])
    sizes = check_models(spec, [state(m) for m in endpoints])
    identity = {g: torch.arange(n) for g, n in sizes.items()}
    merged = tiny_vgg(0)
    merged.load_state_dict(universe_average(spec, [state(m) for m in endpoints], [identity, identity]))
    batches = list(x_batch(5, 24).split(8))
    repaired = repair(merged, endpoints, batches, eps=0.0)

    goal = [conv_output_statistics(m, batches) for m in endpoints]
    got = conv_output_statistics(repaired, batches)
    assert len(got) == 13
    for name, (mean, var) in got.items():
        np.testing.assert_allclose(mean, (goal[0][name][0] + goal[1][name][0]) / 2, atol=1e-5)
        np.testing.assert_allclose(var, (goal[0][name][1] + goal[1][name][1]) / 2, rtol=1e-4, atol=1e-6)


def test_vgg_experiment_runs_with_repair_by_default():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=48)
    images = rng.integers(0, 60, size=(48, 8, 8, 1)).astype(np.uint8)
    for i, label in enumerate(labels):  # a bright bar whose position is the class
        images[i, 2 * label:2 * label + 3, :, 0] = 220
    trained = train_models("vgg", images, labels, num_models=3, seed=0, width=[4, 4, 6], convs_per_stage=[1, 1, 1],
                           classifier_width=8, num_classes=3, config=TrainConfig(epochs=2, batch_size=16, lr=3e-3))
    assert trained.model_kwargs["convs_per_stage"] == [1, 1, 1] and trained.model_kwargs["classifier_width"] == 8
    out = run_alignment_experiment(trained, images[:24], labels[:24], repair_images=images, subset_sizes=(3,),
                                   seed=0, fw_max_iter=10, barrier_points=2)
    merged = out["subsets"][0]["mergers"]
    assert all("repair" in record for record in merged.values())
    assert merged["c2m3"]["cycle_error"]["max"] == 0.0


# --------------------------------------------------------------------------- the reference's norm and shortcut

def test_channel_norm_is_a_layer_norm_of_the_channel_axis_at_each_position():
    """norm ``channel`` = the reference's LayerNorm2d: ``nn.LayerNorm((C,))`` on the channels-last tensor."""
    from weaving.align.models import ChannelNorm2d

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, 6, generator=g)
    ours = ChannelNorm2d(5)
    reference = nn.LayerNorm((5,))
    with torch.no_grad():
        for module in (ours, reference):
            module.weight.copy_(torch.linspace(0.5, 1.5, 5))
            module.bias.copy_(torch.linspace(-1, 1, 5))
        expected = reference(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        torch.testing.assert_close(ours(x), expected)
        mean = x.mean(dim=1, keepdim=True)  # by hand: each position over its channels
        var = x.var(dim=1, unbiased=False, keepdim=True)
        by_hand = (x - mean) / torch.sqrt(var + 1e-5) * ours.weight.view(1, -1, 1, 1) + ours.bias.view(1, -1, 1, 1)
        torch.testing.assert_close(ours(x), by_hand)
    assert set(ours.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("arch,layout", [
    ("vgg", TINY),
    ("resnet", {"width": [4, 6, 8], "blocks_per_stage": 3, "stem_kernel": 3, "stem_stride": 1, "shortcut_kernel": 3}),
])
def test_reference_norm_and_shortcut_keep_the_function_under_permutation(arch, layout):
    """ResNet20's layout with the reference's choices (norm over channels, 3x3 shortcut convs) and the VGG
    with that norm: a random permutation by the spec leaves the outputs unchanged; the spec is the same as
    with ``layer`` norm (same keys)."""
    model = build_model(arch, in_channels=2, image_size=16, num_classes=3, norm="channel", seed=1, **layout).eval()
    same_keys = build_model(arch, in_channels=2, image_size=16, num_classes=3, norm="layer", seed=1, **layout)
    spec = model_spec(model)
    assert spec == model_spec(same_keys)
    sd = state(model)
    moved = apply_permutation(spec, sd, random_permutation(check_models(spec, [sd, sd]),
                                                           torch.Generator().manual_seed(4)))
    other = build_model(arch, in_channels=2, image_size=16, num_classes=3, norm="channel", **layout).eval()
    other.load_state_dict(moved)
    x = x_batch()
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=1e-5, atol=1e-5)
    if arch == "resnet":
        assert sd["stages.1.0.shortcut.conv.weight"].shape == (6, 4, 3, 3)
        with pytest.raises(ParamError, match="odd"):
            build_model(arch, in_channels=2, image_size=16, num_classes=3, **{**layout, "shortcut_kernel": 2})


def test_a_non_default_shortcut_kernel_is_recorded_and_rebuilt():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(16, 8, 8, 1)).astype(np.uint8)
    labels = np.arange(16) % 3
    kw = {"num_models": 2, "seed": 0, "width": [2, 4], "num_classes": 3, "stem_stride": 1,
          "config": TrainConfig(epochs=1, batch_size=8)}
    plain = train_models("resnet", images, labels, **kw)
    assert "shortcut_kernel" not in plain.model_kwargs  # the default leaves earlier runs' records unchanged
    reference = train_models("resnet", images, labels, shortcut_kernel=3, norm="channel", **kw)
    assert reference.model_kwargs["shortcut_kernel"] == 3 and reference.model_kwargs["norm"] == "channel"
    rebuilt = reference.build()
    rebuilt.load_state_dict(reference.state_dicts[1])
    assert rebuilt.stages[1][0].shortcut.conv.kernel_size == (3, 3)
