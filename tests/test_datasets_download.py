"""The verified downloader against a real HTTP server on 127.0.0.1 (Range support, dropped connections)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import socket
import time

import numpy as np
import pytest
from fixtures_datasets import FileServer, make_dtd, sha256

from weaving.datasets import DATASETS, Artifact, DownloadError, download, load_prepared, prepare

PAYLOAD = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def _artifact(server: FileServer, name: str = "blob.bin", **kwargs) -> Artifact:
    fields = {"sha256": PAYLOAD_SHA, "size": len(PAYLOAD), **kwargs}
    return Artifact(name, (server.base_url + name,), **fields)


def test_good_download_verifies_and_lands_under_its_name(tmp_path):
    with FileServer({"blob.bin": PAYLOAD}) as server:
        path = download(_artifact(server), tmp_path, dataset="demo", progress=False)
    assert path == tmp_path / "blob.bin" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "blob.bin.part").exists()


def test_an_interrupted_transfer_resumes_with_a_range_request(tmp_path):
    with FileServer({"blob.bin": PAYLOAD}) as server:
        server.drop_after["blob.bin"] = 100_000
        path = download(_artifact(server), tmp_path, dataset="demo", progress=False)
        requests = list(server.requests)
    assert path.read_bytes() == PAYLOAD
    assert requests[0] == ("blob.bin", None)
    assert requests[1] == ("blob.bin", "bytes=100000-")  # only the missing bytes were asked for
    assert len(requests) == 2


def test_a_partial_file_from_an_earlier_run_is_resumed(tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(PAYLOAD[:123_456])
    with FileServer({"blob.bin": PAYLOAD}) as server:
        download(_artifact(server), tmp_path, dataset="demo", progress=False)
        assert server.requests == [("blob.bin", "bytes=123456-")]
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_a_server_that_ignores_range_restarts_the_file(tmp_path):
    (tmp_path / "blob.bin.part").write_bytes(b"stale bytes of something else")
    with FileServer({"blob.bin": PAYLOAD}) as server:
        server.ignore_range = True
        download(_artifact(server), tmp_path, dataset="demo", progress=False)
    assert (tmp_path / "blob.bin").read_bytes() == PAYLOAD


def test_a_corrupted_archive_is_rejected_and_deleted(tmp_path):
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    with FileServer({"blob.bin": bytes(corrupted)}) as server:
        with pytest.raises(DownloadError) as info:
            download(_artifact(server), tmp_path, dataset="demo", progress=False)
    message = str(info.value)
    assert message.startswith("demo: ") and f"expected {PAYLOAD_SHA}" in message
    assert hashlib.sha256(bytes(corrupted)).hexdigest() in message and "deleted" in message
    assert list(tmp_path.iterdir()) == []


def test_md5_only_artifacts_are_verified_by_md5(tmp_path):
    with FileServer({"blob.bin": PAYLOAD}) as server:
        good = _artifact(server, sha256=None, md5=hashlib.md5(PAYLOAD).hexdigest())
        assert download(good, tmp_path / "a", dataset="demo", progress=False).read_bytes() == PAYLOAD
        bad = _artifact(server, sha256=None, md5="0" * 32)
        with pytest.raises(DownloadError, match="md5"):
            download(bad, tmp_path / "b", dataset="demo", progress=False)
    assert list((tmp_path / "b").iterdir()) == []


def test_unverifiable_artifacts_need_explicit_trust_which_is_then_recorded(tmp_path):
    with FileServer({"blob.bin": PAYLOAD}) as server:
        blind = _artifact(server, sha256=None, size=None)
        with pytest.raises(DownloadError, match="no published checksum.*trust_first_download=True"):
            download(blind, tmp_path, dataset="demo", progress=False)
        assert server.requests == []
        download(blind, tmp_path, dataset="demo", progress=False, trust_first_download=True)
    assert json.loads((tmp_path / "TRUSTED_SHA256.json").read_text()) == {"blob.bin": PAYLOAD_SHA}
    (tmp_path / "blob.bin").write_bytes(PAYLOAD[:-1] + b"\x00")  # tampered afterwards: now caught
    with pytest.raises(DownloadError, match="sha256"):
        download(blind, tmp_path, dataset="demo", progress=False)


def test_an_existing_good_file_is_not_downloaded_again(tmp_path):
    (tmp_path / "blob.bin").write_bytes(PAYLOAD)
    with FileServer({"blob.bin": PAYLOAD}) as server:
        download(_artifact(server), tmp_path, dataset="demo", progress=False)
        assert server.requests == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_fails_at_once_naming_dataset_url_and_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/dtd-r1.0.1.tar.gz"
    artifact = Artifact("dtd-r1.0.1.tar.gz", (url,), "0" * 64)
    started = time.perf_counter()
    with pytest.raises(DownloadError) as info:
        download(artifact, tmp_path / "dtd", dataset="dtd", progress=False)
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert message.startswith("dtd: cannot download dtd-r1.0.1.tar.gz")
    assert url in message and str(tmp_path / "dtd" / "dtd-r1.0.1.tar.gz") in message and "by hand" in message


def test_prepare_downloads_verifies_unpacks_and_prepares_a_paper_dataset(tmp_path, monkeypatch):
    staging = tmp_path / "publisher"
    truth = make_dtd(staging)
    archive = staging / "dtd-r1.0.1.tar.gz"
    spec = DATASETS["dtd"]
    with FileServer({"dtd-r1.0.1.tar.gz": archive.read_bytes()}) as server:
        local = Artifact("dtd-r1.0.1.tar.gz", (server.base_url + "dtd-r1.0.1.tar.gz",), sha256(archive),
                         archive.stat().st_size, extract=True)
        source = dataclasses.replace(spec.sources[0], artifacts=(local,))
        monkeypatch.setitem(DATASETS, "dtd", dataclasses.replace(spec, sources=(source,)))
        raw = tmp_path / "raw"
        with pytest.raises(Exception, match="no source is available. Downloads are off"):
            prepare("dtd", out_dir=tmp_path / "out", raw_dir=raw, progress=False)
        server.drop_after["dtd-r1.0.1.tar.gz"] = 5000
        meta = prepare("dtd", out_dir=tmp_path / "out", raw_dir=raw, allow_download=True, progress=False)
        assert [r[1] for r in server.requests] == [None, "bytes=5000-"]
    assert meta["source"]["sha256"]["dtd-r1.0.1.tar.gz"] == sha256(archive)
    ds = load_prepared(tmp_path / "out")
    assert len(ds.split("test")) == len(truth["test"]) and ds.num_classes == 47
    # a second run finds the archive unpacked and does not download again
    prepare("dtd", out_dir=tmp_path / "out2", raw_dir=raw, allow_download=False, progress=False)
