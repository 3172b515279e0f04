"""Split rules: class_splits, stratified orders, limit handling, the task-vector val split, metadata files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from weaving.datasets import DATASETS, DatasetError, class_splits
from weaving.datasets.metadata import METADATA_DIR, load_metadata
from weaving.datasets.preparation import normalize_limits
from weaving.datasets.splits import literature_val_split, stratified_order, take_segments


@given(num_classes=st.integers(1, 300), data=st.data())
@settings(max_examples=60, deadline=None)
def test_class_splits_are_contiguous_chunks_of_the_seeded_order(num_classes, data):
    n_splits = data.draw(st.integers(1, num_classes))
    seed = data.draw(st.integers(0, 2**31 - 1))
    chunks = class_splits(num_classes, n_splits, seed=seed)
    order = np.random.default_rng(seed).permutation(num_classes).tolist()
    flat = [c for chunk in chunks for c in chunk]
    assert flat == order  # contiguous chunks of the seeded order, covering every class once
    assert len(chunks) == n_splits and all(chunks)
    sizes = [len(c) for c in chunks]
    assert max(sizes) - min(sizes) <= 1
    # MagMax's boundaries: floor(C / N * i)
    bounds = np.cumsum([0] + sizes).tolist()
    assert bounds == [int(np.floor(num_classes * i / n_splits)) for i in range(n_splits + 1)]
    assert class_splits(num_classes, n_splits, seed=seed) == chunks


def test_class_splits_depend_on_the_seed_and_reject_bad_requests():
    assert class_splits(100, 10, seed=0) != class_splits(100, 10, seed=1)
    assert sorted(c for chunk in class_splits(10, 5, seed=3) for c in chunk) == list(range(10))
    with pytest.raises(DatasetError, match="n_splits=11 is more than num_classes=10"):
        class_splits(10, 11)
    with pytest.raises(DatasetError, match="n_splits must be a positive int"):
        class_splits(10, 0)
    with pytest.raises(DatasetError, match="num_classes must be a positive int"):
        class_splits(0, 1)


def test_uneven_class_splits_put_the_extra_classes_last():
    assert [len(c) for c in class_splits(10, 3, seed=0)] == [3, 3, 4]


# A greedy "largest deficit first" order breaks the one-item bound on these label sets: the first
# (found by this test) reaches exactly one item, the second 1.11 items (class sizes 1, 1, 1, 16,
# 30, 1, 1, 30; seed 0).
_GREEDY_AT_ONE = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 5, 6]
_GREEDY_BEYOND_ONE = [c for c, size in enumerate([1, 1, 1, 16, 30, 1, 1, 30]) for _ in range(size)]


@given(st.lists(st.integers(0, 7), min_size=1, max_size=200), st.integers(0, 1000))
@example(_GREEDY_AT_ONE, 0)
@example(_GREEDY_BEYOND_ONE, 0)
@settings(max_examples=60, deadline=None)
def test_every_prefix_of_a_stratified_order_is_within_tijdemans_bound(labels, seed):
    """Every prefix of length k holds each class within 1 - 1/(2n - 2) items of k * share (n classes)."""
    labels = np.asarray(labels)
    order = stratified_order(labels, np.random.default_rng(seed))
    assert sorted(order.tolist()) == list(range(len(labels)))
    classes, totals = np.unique(labels, return_counts=True)
    bound = 1.0 - 1.0 / (2 * len(classes) - 2) if len(classes) > 1 else 0.0
    for k in range(1, len(labels) + 1):
        counts = np.array([(labels[order[:k]] == c).sum() for c in classes])
        assert np.all(np.abs(counts - k * totals / len(labels)) <= bound + 1e-12)
    assert stratified_order(labels, np.random.default_rng(seed), length=3).tolist() == order[:3].tolist()


def test_take_segments_are_disjoint_capped_and_none_takes_the_rest():
    order = np.array([5, 3, 9, 0, 1, 7])
    a, b, c = take_segments(order, [2, None, 4])
    assert a.tolist() == [3, 5] and b.tolist() == [0, 1, 7, 9] and c.tolist() == []
    a, b = take_segments(order, [10, 1])
    assert len(a) == 6 and len(b) == 0


def test_literature_val_split_reproduces_the_task_vector_code():
    train, val = literature_val_split(60000)
    assert len(val) == 5000 and len(train) == 55000
    assert train[0] == 36044  # the assertion in mlfoundations/task_vectors registry.py for MNISTVal
    assert len(np.intersect1d(train, val)) == 0
    train, val = literature_val_split(3760)  # DTD: 10 %, under the 5,000 cap
    assert len(val) == 376


def test_limits_defaults_and_validation():
    assert normalize_limits(None, "embedded", "x") == {"pretrain": 0, "train": None, "val": 0, "test": None}
    assert normalize_limits({"train": 5}, "paper", "x") == {"pretrain": 0, "train": 5, "val": None, "test": None}
    assert normalize_limits({"val": None}, "embedded", "x")["val"] is None
    with pytest.raises(DatasetError, match=r"x: unknown limits \['trian'\]; valid: pretrain, train, val, test"):
        normalize_limits({"trian": 3}, "embedded", "x")
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(DatasetError, match=r"limits\['test'\] must be None or an int >= 0"):
            normalize_limits({"test": bad}, "embedded", "x")


@pytest.mark.parametrize("path", sorted(METADATA_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_metadata_file_is_usable_by_the_text_tower(path: Path):
    data = json.loads(path.read_text())
    assert data["name"] == path.stem and path.stem in DATASETS
    for profile in ("embedded", "paper"):
        meta = load_metadata(path.stem, profile)
        assert all(t.count("{}") == 1 for t in meta.templates)
        assert len(set(meta.classnames)) == len(meta.classnames)
        assert all(name.strip() == name and name for name in meta.classnames)
        if meta.archive_names is not None:
            assert len(meta.archive_names) == len(meta.classnames)


@pytest.mark.parametrize("name,count", [("sun397", 397), ("cars", 196), ("resisc45", 45), ("eurosat", 10), ("svhn", 10),
                                        ("gtsrb", 43), ("mnist", 10), ("dtd", 47), ("cifar100", 100),
                                        ("imagenet_r", 200), ("cub200", 200), ("textures", 12), ("ising", 2),
                                        ("cahn_hilliard", 4), ("fashion_mnist", 10), ("optdigits", 10)])
def test_class_counts_match_the_datasets(name, count):
    assert len(load_metadata(name, "paper").classnames) == count


def test_every_registered_dataset_has_metadata():
    assert sorted(DATASETS) == sorted(p.stem for p in METADATA_DIR.glob("*.json"))
