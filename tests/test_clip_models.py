"""weaving.clip.models: embedded config, seeded creation, local-dir round trip, offline failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from weaving.clip import EMBEDDED_MODELS, create_model, image_size_of, load_pretrained, mean_std_of, save_pretrained  # noqa: E402
from weaving.clip.models import CONFIG_DIR  # noqa: E402

TINY = "weaving-tiny-clip"


def test_embedded_config_is_shipped_and_small():
    assert TINY in EMBEDDED_MODELS
    cfg = json.loads((CONFIG_DIR / f"{TINY}.json").read_text())
    assert cfg["text_cfg"]["vocab_size"] == 49408  # the bundled tokenizer
    assert 32 <= cfg["text_cfg"]["context_length"] <= 77
    assert 64 <= cfg["embed_dim"] <= 128


def test_create_tiny_model_offline_and_seeded():
    before = torch.get_rng_state()
    a = create_model(TINY, seed=0)
    assert torch.equal(torch.get_rng_state(), before), "create_model must not move the global RNG"
    b = create_model(TINY, seed=0)
    c = create_model(TINY, seed=1)
    assert isinstance(a, open_clip.CLIP)
    assert image_size_of(a) == 32
    assert not a.training
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["visual.conv1.weight"], sc["visual.conv1.weight"])
    with torch.no_grad():
        out = a.encode_image(torch.zeros(2, 3, 32, 32))
        text = a.encode_text(open_clip.tokenize(["a photo of a cat."], context_length=a.context_length))
    assert out.shape == (2, a.visual.output_dim) and text.shape == (1, a.visual.output_dim)


def test_unknown_model_and_bad_pretrained_fail_before_work():
    with pytest.raises(ValueError, match="unknown model 'no-such-clip'.*weaving-tiny-clip"):
        create_model("no-such-clip")
    with pytest.raises(ValueError, match="no published weights"):
        create_model(TINY, pretrained="openai")
    with pytest.raises(ValueError, match="unknown pretrained tag 'bogus'.*openai"):
        create_model("ViT-B-32", pretrained="bogus")


def test_openai_weights_offline_fail_fast_with_clear_message():
    code = (
        "from weaving.clip import create_model\n"
        "from weaving.errors import InputError\n"
        "try:\n    create_model('ViT-B-32', pretrained='openai')\n"
        "except InputError as err:\n    print('ERR', err)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert "ERR could not load pretrained weights 'openai' for 'ViT-B-32'" in out.stdout, out.stdout + out.stderr
    assert "HF_HUB_OFFLINE='1'" in out.stdout
    assert elapsed < 40  # import ~5 s; a network attempt would hang ~47 s


def test_save_load_round_trip(tmp_path):
    model = create_model(TINY, seed=3)
    out = tmp_path / "pretrained"
    save_pretrained(model, TINY, out)
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors",
                                                    "visual.safetensors"]
    loaded = load_pretrained(out)
    expected = model.state_dict()
    got = loaded.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    visual = load_file(str(out / "visual.safetensors"))
    assert set(visual) == set(model.visual.state_dict())
    assert all(torch.equal(visual[k], v) for k, v in model.visual.state_dict().items())
    direct = open_clip.create_model(f"local-dir:{out}")  # the contract: plain open_clip can read it
    assert torch.equal(direct.state_dict()["logit_scale"], expected["logit_scale"])
    assert mean_std_of(loaded) == mean_std_of(model)
    assert image_size_of(loaded) == 32


def test_save_rejects_wrong_config_name(tmp_path):
    model = create_model(TINY)
    with pytest.raises(ValueError, match="does not match config 'ViT-B-32'"):
        save_pretrained(model, "ViT-B-32", tmp_path / "x")
    assert not (tmp_path / "x" / "open_clip_model.safetensors").exists()


def test_load_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_pretrained(tmp_path)
