"""Where the CLIP model comes from (a path, the HF cache, never a hang); names; the registry."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack import resolve_embed_model
from embedstack.providers.clip import (
    DEFAULT_CLIP_MODEL,
    OPENAI_CLIP_MODELS,
    ClipEmbedding,
    from_spec,
    hf_clip_name,
)
from embedstack.providers.hub import ModelNotFoundError
from embedstack.types import Role

SHA = "0123456789abcdef0123456789abcdef01234567"


def _fake_hf_cache(cache: Path, repo_id: str, model_dir: Path) -> Path:
    """Lay out `model_dir` as the Hugging Face cache would hold `repo_id` at revision main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / SHA
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    return snapshot


@pytest.fixture
def hf_cache(tmp_path: Path, tiny_clip_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private default HF cache for this test, holding the tiny CLIP as the default model."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    _fake_hf_cache(cache, DEFAULT_CLIP_MODEL, tiny_clip_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.mark.parametrize(("name", "hf_id"), sorted(OPENAI_CLIP_MODELS.items()))
def test_llama_index_names_map_to_hugging_face_ids(name: str, hf_id: str) -> None:
    assert hf_clip_name(name) == hf_id
    assert hf_clip_name(name.lower()) == hf_id
    assert hf_clip_name("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"


@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "rn50"])
def test_resnet_clips_are_refused_with_an_alternative(name: str) -> None:
    with pytest.raises(ValueError, match=r"ResNet CLIP.*'ViT-B/32' \(openai/clip-vit-base-patch32\)"):
        ClipEmbedding(model_name=name)


def test_llama_index_default_name_resolves_from_the_hf_cache(hf_cache: Path) -> None:
    by_openai_name = ClipEmbedding(model_name="ViT-B/32")
    by_hf_id = ClipEmbedding()
    assert by_openai_name.model_name == by_hf_id.model_name == DEFAULT_CLIP_MODEL
    assert by_openai_name.source.origin == "hf-cache"
    assert by_openai_name.source.path == hf_cache / f"models--openai--clip-vit-base-patch32/snapshots/{SHA}"
    assert by_openai_name.provider.identity() == by_hf_id.provider.identity()  # one cache entry for both spellings
    assert len(by_openai_name.get_text_embedding("a cat")) == 24  # loads from the cached snapshot


def test_openai_names_map_on_assignment_and_copy_too(hf_cache: Path, tiny_clip_path: Path) -> None:
    model = ClipEmbedding(model_name=str(tiny_clip_path))
    copied = model.model_copy(update={"model_name": "vit-b/32"})  # model_copy skips validation: mapped anyway
    assert copied.model_name == DEFAULT_CLIP_MODEL and copied.source.origin == "hf-cache"
    assert model.model_name == str(tiny_clip_path) and model.source.origin != "hf-cache"
    model.model_name = "ViT-B/32"
    assert model.model_name == DEFAULT_CLIP_MODEL and model.source.path == copied.source.path
    assert model.provider.identity() == ClipEmbedding().provider.identity()


def test_resolve_embed_model_clip_uses_the_default_model(hf_cache: Path, make_png: Any) -> None:
    model = resolve_embed_model("clip")
    assert isinstance(model, ClipEmbedding) and model.model_name == DEFAULT_CLIP_MODEL
    vec = model.get_image_embedding(make_png((5, 6, 7)))
    assert len(vec) == len(model.get_text_embedding("a cat"))
    assert resolve_embed_model("clip:ViT-B/32").model_name == DEFAULT_CLIP_MODEL
    assert from_spec(None).model_name == DEFAULT_CLIP_MODEL


def test_resolve_embed_model_clip_with_a_path(tiny_clip_path: Path, image_dir: Path) -> None:
    model = resolve_embed_model(f"clip:{tiny_clip_path}")
    assert isinstance(model, ClipEmbedding)
    assert model.model_name == str(tiny_clip_path) and model.source.origin == "path"
    a = np.asarray(model.get_image_embedding(image_dir / "red.png"))
    b = np.asarray(from_spec(str(tiny_clip_path)).get_image_embedding(image_dir / "red.png"))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_offline_and_absent_fails_fast_naming_model_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from embedstack.providers import hub as _hf_source

    def network(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("offline mode must not touch the network")

    monkeypatch.setattr(_hf_source, "hub_reachable", network)  # fault: any network step fails the test
    monkeypatch.setattr(_hf_source, "_download", network)
    with pytest.raises(ModelNotFoundError) as info:
        ClipEmbedding(model_name="ViT-L/14", cache_folder=str(tmp_path / "empty-cache"))
    msg = str(info.value)
    assert "openai/clip-vit-large-patch14" in msg and "HF_HUB_OFFLINE" in msg
    assert "local model directory" in msg and str(tmp_path / "empty-cache") in msg


def test_unreachable_hub_fails_fast_instead_of_hanging(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(ModelNotFoundError, match="not reachable"):
        resolve_embed_model("clip:ViT-B/16")


def test_missing_path_and_non_clip_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ClipEmbedding(model_name=str(tmp_path / "no" / "such" / "clip"))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (bert / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"not a CLIP model .*'bert'"):
        ClipEmbedding(model_name=str(bert))


def test_hub_snapshot_commit_is_in_the_cache_key(hf_hub_cache: Path, build_clip: Any) -> None:
    """An updated CLIP (a new snapshot, refs/main moved to it) gets its own cache keys."""
    old_sha, new_sha = "a" * 40, "b" * 40
    repo = hf_hub_cache / "models--tiny-org--moving-clip"
    build_clip(repo / "snapshots" / old_sha, seed=0)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(old_sha)
    old = ClipEmbedding(model_name="tiny-org/moving-clip", device="cpu")
    build_clip(repo / "snapshots" / new_sha, seed=1)
    (repo / "refs" / "main").write_text(new_sha)
    new = ClipEmbedding(model_name="tiny-org/moving-clip", device="cpu")
    assert (old.source.path.name, new.source.path.name) == (old_sha, new_sha)
    assert old.pipeline.key_factory(Role.TEXT)("a cat") != new.pipeline.key_factory(Role.TEXT)("a cat")
    assert old.provider.identity()["snapshot"] == old_sha and new.provider.identity()["snapshot"] == new_sha
