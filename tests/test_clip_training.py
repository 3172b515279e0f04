"""Fine-tuning and pretraining: what is trained, convergence on toy data, determinism, resumption."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from clip_fixtures import ArraySplit  # noqa: E402

from weaving.clip import (  # noqa: E402
    FinetuneRecipe,
    PretrainRecipe,
    TrainingInterrupted,
    create_model,
    finetune,
    pretrain,
    zeroshot_head,
)
from weaving.clip.preprocess import model_uint8_to_tensor  # noqa: E402


@dataclass
class ToyDataset:
    name: str
    classnames: list[str]
    templates: list[str]
    splits: dict = field(default_factory=dict)

    def split(self, name):
        return self.splits[name]


def stripes(n: int, num_classes: int, seed: int, size: int = 16) -> ArraySplit:
    """Class k: stripes of period 2 + k (horizontal for even k, vertical for odd) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    grid = np.arange(size)
    images = np.zeros((n, size, size, 1), dtype=np.uint8)
    for i, k in enumerate(labels):
        period = 2 + k
        wave = ((grid + rng.integers(period)) // max(1, period // 2)) % 2 * 200
        img = np.tile(wave, (size, 1)) if k % 2 else np.tile(wave[:, None], (1, size))
        images[i, ..., 0] = np.clip(img + rng.integers(0, 40, (size, size)), 0, 255)
    return ArraySplit(images, labels.astype(np.int64))


@pytest.fixture(scope="module")
def model():
    return create_model("weaving-tiny-clip", seed=0)


@pytest.fixture(scope="module")
def head(model):
    return zeroshot_head(model, ["alpha", "beta", "gamma", "delta"], ["a {}.", "the {} pattern."])


def recipe(**kw) -> FinetuneRecipe:
    base = dict(steps=12, batch_size=32, lr=1e-3, weight_decay=0.1, warmup_steps=2)
    return FinetuneRecipe(**{**base, **kw})


def train_loss(model, visual_sd, head, split) -> float:
    """Cross entropy of the frozen-head classifier, computed independently of finetune."""
    visual = create_model("weaving-tiny-clip", seed=0).visual
    visual.load_state_dict(visual_sd)
    visual.eval()
    with torch.no_grad():
        x = model_uint8_to_tensor(model, split.images)
        feats = F.normalize(visual(x), dim=-1)
        return float(F.cross_entropy(model.logit_scale.exp() * feats @ head.T, torch.as_tensor(split.labels)))


def clone_state(module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_finetune_trains_only_a_copy_of_the_image_encoder_and_lowers_the_loss(model, head):
    split = stripes(128, 4, seed=0)
    before = clone_state(model)
    sd = finetune(model, head, split, recipe(steps=30), seed=0, progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "model (both towers) must be untouched"
    assert set(sd) == set(model.visual.state_dict())
    assert all(v.device.type == "cpu" for v in sd.values())
    assert any(not torch.equal(sd[k], model.visual.state_dict()[k]) for k in sd)
    loss_before = train_loss(model, model.visual.state_dict(), head, split)
    loss_after = train_loss(model, sd, head, split)
    assert loss_after < 0.5 * loss_before, (loss_before, loss_after)


def test_finetune_is_deterministic_given_the_seed(model, head):
    split = stripes(64, 4, seed=1)
    a = finetune(model, head, split, recipe(augment="shift"), seed=5, progress=False)
    b = finetune(model, head, split, recipe(augment="shift"), seed=5, progress=False)
    c = finetune(model, head, split, recipe(augment="shift"), seed=6, progress=False)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("augment", ["none", "shift"])
def test_resume_after_simulated_kill_gives_identical_weights(model, head, tmp_path, augment):
    split = stripes(80, 4, seed=2)  # 3 batches of 32 per epoch: resumes mid-epoch
    r = recipe(steps=10, checkpoint_every=3, augment=augment)
    uninterrupted = finetune(model, head, split, r, seed=0, progress=False)
    with pytest.raises(TrainingInterrupted) as info:
        finetune(model, head, split, r, seed=0, checkpoint_dir=tmp_path, progress=False, max_steps_this_run=7)
    assert info.value.step == 7
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["step"] == 6  # steps 7 is lost, as in a real kill
    resumed = finetune(model, head, split, r, seed=0, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_checkpoint_of_another_run_is_discarded_and_training_starts_fresh(model, head, tmp_path, capsys):
    """Issue 10: a changed recipe says so, discards the stale checkpoint, and trains from step 0."""
    split = stripes(64, 4, seed=3)
    with pytest.raises(TrainingInterrupted):
        finetune(model, head, split, recipe(checkpoint_every=2), seed=0, checkpoint_dir=tmp_path,
                 progress=False, max_steps_this_run=3)
    changed = recipe(checkpoint_every=2, lr=2e-3)
    fresh = finetune(model, head, split, changed, seed=0, progress=False)
    resumed = finetune(model, head, split, changed, seed=0, checkpoint_dir=tmp_path, progress=False)
    assert "belongs to a different run" in capsys.readouterr().err
    assert all(torch.equal(fresh[k], resumed[k]) for k in fresh)


def test_an_unreadable_checkpoint_is_discarded(model, head, tmp_path, capsys):
    split = stripes(64, 4, seed=3)
    (tmp_path / "last.pt").write_bytes(b"truncated")
    fresh = finetune(model, head, split, recipe(checkpoint_every=2), seed=0, progress=False)
    resumed = finetune(model, head, split, recipe(checkpoint_every=2), seed=0, checkpoint_dir=tmp_path, progress=False)
    assert "cannot be read" in capsys.readouterr().err
    assert all(torch.equal(fresh[k], resumed[k]) for k in fresh)


def test_class_subset_trains_on_that_subset_only(model, head):
    split = stripes(96, 4, seed=4)
    subset = [3, 1]
    keep = np.isin(split.labels, subset)
    remapped = np.where(split.labels[keep] == 3, 0, 1)
    only = ArraySplit(split.images[keep], remapped.astype(np.int64))
    via_subset = finetune(model, head, split, recipe(), seed=0, class_subset=subset, progress=False)
    by_hand = finetune(model, head[subset], only, recipe(), seed=0, progress=False)
    assert all(torch.allclose(via_subset[k], by_hand[k], atol=1e-6) for k in by_hand)


def test_init_visual_is_the_starting_point(model, head):
    split = stripes(64, 4, seed=5)
    start = create_model("weaving-tiny-clip", seed=9)
    from_init = finetune(model, head, split, recipe(), seed=0, init_visual=start.visual.state_dict(), progress=False)
    start_model = create_model("weaving-tiny-clip", seed=0)
    start_model.visual.load_state_dict(start.visual.state_dict())
    from_model = finetune(start_model, head, split, recipe(), seed=0, progress=False)
    assert all(torch.equal(from_init[k], from_model[k]) for k in from_init)


def test_epochs_count_optimizer_steps(model, head):
    split = stripes(70, 4, seed=6)  # ceil(70 / 32) = 3 steps per epoch
    r = FinetuneRecipe(epochs=2, batch_size=32)
    assert r.total_steps(70) == 6
    with pytest.raises(TrainingInterrupted):
        finetune(model, head, split, r, progress=False, max_steps_this_run=5)
    finetune(model, head, split, r, progress=False, max_steps_this_run=6)  # the 6th step is the last


def test_finetune_errors_before_work(model, head):
    split = stripes(16, 4, seed=7)
    with pytest.raises(ValueError, match="embed_dim"):
        finetune(model, torch.randn(4, 5), split, recipe(), progress=False)
    with pytest.raises(ValueError, match=r"outside \[0, 4\)"):
        finetune(model, head, split, recipe(), class_subset=[0, 4], progress=False)
    with pytest.raises(ValueError, match="warmup_steps 12"):
        finetune(model, head, split, recipe(warmup_steps=12), progress=False)
    with pytest.raises(ValueError, match="init_visual does not match"):
        finetune(model, head, split, recipe(), init_visual={"x": torch.zeros(1)}, progress=False)
    with pytest.raises(ValueError, match="labels span"):
        finetune(model, head[:2], split, recipe(), progress=False)
    with pytest.raises(ValueError, match="exactly one of steps or epochs"):
        FinetuneRecipe(steps=3, epochs=1)
    with pytest.raises(ValueError, match="Extra inputs"):
        FinetuneRecipe(steps=3, momentum=0.9)


def toy_datasets() -> list[ToyDataset]:
    a = ToyDataset("a", ["alpha", "beta"], ["a {}.", "the {}."], {"pretrain": stripes(96, 2, seed=10)})
    b = ToyDataset("b", ["gamma", "delta", "alpha"], ["{} pattern"], {"pretrain": stripes(64, 3, seed=11)})
    return [a, b]


def test_pretrain_trains_both_towers_deterministically_and_resumes(tmp_path):
    r = PretrainRecipe(steps=8, batch_size=32, lr=1e-3, warmup_steps=1, checkpoint_every=3)
    first = create_model("weaving-tiny-clip", seed=0)
    initial = clone_state(first)
    log = pretrain(first, toy_datasets(), r, seed=0, progress=False)
    assert log["steps"] == 8 and len(log["losses"]) == 8 and log["images"] == 160
    trained = first.state_dict()
    for key in ("visual.conv1.weight", "token_embedding.weight", "text_projection", "logit_scale"):
        assert not torch.equal(initial[key], trained[key]), key
    assert np.mean(log["losses"][-3:]) < np.mean(log["losses"][:3])

    second = create_model("weaving-tiny-clip", seed=0)
    with pytest.raises(TrainingInterrupted):
        pretrain(second, toy_datasets(), r, seed=0, checkpoint_dir=tmp_path, progress=False, max_steps_this_run=5)
    third = create_model("weaving-tiny-clip", seed=0)
    resumed_log = pretrain(third, toy_datasets(), r, seed=0, checkpoint_dir=tmp_path, progress=False)
    assert resumed_log["resumed_from"] == 3
    assert resumed_log["losses"] == pytest.approx(log["losses"])
    assert all(torch.equal(trained[k], v) for k, v in third.state_dict().items())


def test_multi_positive_loss_matches_hand_computation():
    from weaving.clip.pretrain import multi_positive_clip_loss

    torch.manual_seed(0)
    img, txt = torch.randn(4, 8), torch.randn(4, 8)
    keys = torch.tensor([0, 1, 0, 2])
    got = multi_positive_clip_loss(img, txt, torch.tensor(10.0), keys)
    logits = 10 * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    total = 0.0
    for side in (logits, logits.T):
        logp = side.log_softmax(dim=1)
        for i in range(4):
            positives = [j for j in range(4) if keys[j] == keys[i]]
            total -= sum(logp[i, j] for j in positives) / len(positives) / 4
    assert float(got) == pytest.approx(float(total) / 2, rel=1e-5)


def test_pretrain_errors_before_work():
    model = create_model("weaving-tiny-clip")
    with pytest.raises(ValueError, match="at least one dataset"):
        pretrain(model, [], PretrainRecipe(steps=2), progress=False)
    bad = ToyDataset("bad", ["x"], ["{}"], {"pretrain": stripes(8, 2, seed=0)})
    with pytest.raises(ValueError, match=r"dataset 'bad': labels outside \[0, 1\)"):
        pretrain(model, [bad], PretrainRecipe(steps=2), progress=False)
