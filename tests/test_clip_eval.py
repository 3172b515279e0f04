"""Zero-shot heads, preprocessing / eval caches and evaluation, against hand computations."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from clip_fixtures import ArraySplit  # noqa: E402
from PIL import Image  # noqa: E402

from weaving.clip import cache_eval_tensors, create_model, evaluate, mean_std_of, zeroshot_head  # noqa: E402
from weaving.clip.preprocess import split_to_tensor, uint8_to_tensor  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return create_model("weaving-tiny-clip", seed=0)


def test_zeroshot_head_matches_hand_computation(model):
    classnames = ["zero", "one", "ankle boot"]
    templates = ["a photo of a {}.", "the digit {}.", "{}"]
    head = zeroshot_head(model, classnames, templates)
    assert head.shape == (3, model.visual.output_dim) and head.dtype == torch.float32
    assert torch.allclose(head.norm(dim=1), torch.ones(3), atol=1e-6)
    rows = []
    with torch.no_grad():
        for name in classnames:
            embs = []
            for template in templates:
                tokens = open_clip.tokenize([template.replace("{}", name)], context_length=model.context_length)
                e = model.encode_text(tokens)[0]
                embs.append(e / e.norm())
            mean = torch.stack(embs).mean(0)
            rows.append(mean / mean.norm())
    assert torch.allclose(head, torch.stack(rows), atol=1e-5)


def test_zeroshot_head_rejects_templates_without_placeholder(model):
    with pytest.raises(ValueError, match="must contain"):
        zeroshot_head(model, ["a"], ["a photo."])
    with pytest.raises(ValueError, match="classnames is empty"):
        zeroshot_head(model, [], ["{}"])


def _pil_resize_reference(images: np.ndarray, size: int, mean, std) -> torch.Tensor:
    """Per-channel float PIL bilinear resize (PIL antialiases when shrinking), then normalise."""
    out = np.zeros((len(images), 3, size, size), dtype=np.float32)
    for n, img in enumerate(images):
        img = img.astype(np.float32) / 255.0
        if img.shape[-1] == 1:
            img = np.repeat(img, 3, axis=-1)
        for c in range(3):
            channel = Image.fromarray(img[..., c], mode="F").resize((size, size), Image.BILINEAR)
            out[n, c] = (np.asarray(channel) - mean[c]) / std[c]
    return torch.from_numpy(out)


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 64, 64, 3), (3, 28, 28, 1), (2, 32, 32, 3)])
def test_uint8_preprocessing_matches_pil_reference(shape):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    got = uint8_to_tensor(images, 32, mean, std)
    expected = _pil_resize_reference(images, 32, mean, std)
    assert got.shape == (shape[0], 3, 32, 32) and got.dtype == torch.float32
    assert torch.allclose(got, expected, atol=2e-3), float((got - expected).abs().max())


def test_uint8_preprocessing_rejects_bad_arrays():
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_tensor(np.zeros((1, 4, 4, 1), dtype=np.float32), 32, (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        uint8_to_tensor(np.zeros((1, 4, 4, 2), dtype=np.uint8), 32, (0, 0, 0), (1, 1, 1))


def test_cache_eval_tensors_hand_computation(model):
    images = np.array([[[[0], [255]], [[51], [102]]]], dtype=np.uint8)  # one 2x2 grey image
    images = np.repeat(np.repeat(images, 16, axis=1), 16, axis=2)  # 32x32 blocks: no resize needed
    split = ArraySplit(images, np.array([1], dtype=np.int64))
    cache = cache_eval_tensors(model, split)
    assert cache["images"].dtype == torch.float16 and cache["labels"].dtype == torch.int64
    mean, std = mean_std_of(model)
    for c in range(3):
        for (r, col), value in {(0, 0): 0, (0, 31): 255, (31, 0): 51, (31, 31): 102}.items():
            expected = (value / 255 - mean[c]) / std[c]
            assert float(cache["images"][0, c, r, col]) == pytest.approx(expected, abs=2e-3)
    assert cache["labels"].tolist() == [1]


def test_file_splits_use_open_clip_transform(model):
    rng = np.random.default_rng(1)
    split = ArraySplit(rng.integers(0, 256, size=(2, 40, 50, 3), dtype=np.uint8), np.array([0, 1]))
    split.format = "files"
    _, _, preprocess = open_clip.create_model_and_transforms("weaving-tiny-clip")
    got = split_to_tensor(model, split)
    expected = torch.stack([preprocess(split.pil(i)) for i in range(2)])
    assert torch.allclose(got, expected)


def _independent_predictions(model, images, head):
    with torch.no_grad():
        feats = model.visual(images.float())
        feats = feats / feats.norm(dim=-1, keepdim=True)
        return (feats @ head.T).argmax(dim=-1)


def test_evaluate_equals_independent_forward(model):
    torch.manual_seed(0)
    images = torch.randn(40, 3, 32, 32).half()
    head = torch.nn.functional.normalize(torch.randn(5, model.visual.output_dim), dim=-1)
    labels = _independent_predictions(model, images, head).clone()
    labels[::4] = (labels[::4] + 1) % 5  # exactly 10 of 40 wrong
    cache = {"images": images, "labels": labels}
    assert evaluate(model, None, head, cache, batch_size=16) == pytest.approx(75.0)

    other = create_model("weaving-tiny-clip", seed=7)
    other_sd = other.visual.state_dict()
    other_pred = _independent_predictions(other, images, head)
    expected = 100.0 * (other_pred == labels).double().mean().item()
    assert evaluate(model, other_sd, head, cache) == pytest.approx(expected)
    assert all(torch.equal(model.visual.state_dict()[k], v) for k, v in other_sd.items())  # loaded in place


def test_evaluate_class_subset_remaps_labels(model):
    torch.manual_seed(1)
    images = torch.randn(60, 3, 32, 32).half()
    head = torch.nn.functional.normalize(torch.randn(6, model.visual.output_dim), dim=-1)
    labels = torch.randint(0, 6, (60,))
    subset = [4, 1, 3]
    keep = torch.isin(labels, torch.tensor(subset))
    pred = _independent_predictions(model, images[keep], head[subset])
    predicted_class = torch.tensor(subset)[pred]
    expected = 100.0 * (predicted_class == labels[keep]).double().mean().item()
    got = evaluate(model, None, head, {"images": images, "labels": labels}, class_subset=subset)
    assert got == pytest.approx(expected)


def test_evaluate_errors(model):
    head = torch.randn(3, model.visual.output_dim)
    cache = {"images": torch.zeros(2, 3, 32, 32).half(), "labels": torch.tensor([0, 5])}
    with pytest.raises(ValueError, match="labels span"):
        evaluate(model, None, head, cache)
    with pytest.raises(ValueError, match="embed_dim 7"):
        evaluate(model, None, torch.randn(3, 7), cache)
    cache["labels"] = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        evaluate(model, None, head, cache, class_subset=[0, 3])
    with pytest.raises(ValueError, match="missing keys"):
        evaluate(model, {"conv1.weight": torch.zeros(1)}, head, cache)
