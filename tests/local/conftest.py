"""Fixtures for local-model tests: offline mode, the real bundled model once, tiny random BERTs."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

WORDS = (
    "the a an man woman is are eating food bread piece of cat dog sat on mat quick brown fox jumps "
    "over lazy red blue green house car tree river city music book".split()
)


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    """No test may reach a model hub: offline mode for the whole session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_ENDPOINT", raising=False)
        yield


@pytest.fixture(scope="session")
def minilm() -> object:
    """The real default model (bundled all-MiniLM-L6-v2), loaded once per session."""
    from embedstack.providers.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding().load()


@dataclass(frozen=True)
class TinyModels:
    """Directories of one tiny random BERT: plain checkpoint, and sentence-transformers configs."""

    plain: Path  # transformers only (config.json, weights, tokenizer)
    st_mean: Path  # sentence-transformers: Transformer + mean Pooling + Normalize
    st_cls_prompts: Path  # sentence-transformers: CLS pooling, max_seq_length 16, query/document prompts
    root: Path


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_bert_checkpoint: Path) -> TinyModels:
    """The shared tiny random BERT as a plain checkpoint and as two sentence-transformers dirs."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    root = tmp_path_factory.mktemp("tiny-bert-st")
    plain = tiny_bert_checkpoint
    st_mean = root / "st-mean"
    SentenceTransformer(
        modules=[Transformer(str(plain)), Pooling(32, pooling_mode="mean"), Normalize()],
        device="cpu",
    ).save(str(st_mean))

    st_cls = root / "st-cls-prompts"
    SentenceTransformer(
        modules=[Transformer(str(plain), max_seq_length=16), Pooling(32, pooling_mode="cls")],
        device="cpu",
        prompts={"query": "query: ", "document": "passage: "},
    ).save(str(st_cls))
    return TinyModels(plain=plain, st_mean=st_mean, st_cls_prompts=st_cls, root=root)


def _make_hf_cache(cache: Path, repo_id: str, files_from: Path, commit: str = "0" * 40) -> Path:
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    shutil.copytree(files_from, snapshot)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)  # the newest snapshot is "main"
    return snapshot


@pytest.fixture
def make_hf_cache() -> Callable[..., Path]:
    """make_hf_cache(cache_dir, repo_id, files_from, commit="0"*40): lay files out as the HF cache does
    (a snapshot folder per commit; refs/main names the last one made)."""
    return _make_hf_cache
