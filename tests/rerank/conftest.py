"""Tiny random sequence-classification checkpoints the rerank tests build and save once per session.

BERT (one label, and three), XLM-RoBERTa (a Unigram tokenizer, `<s> A </s></s> B </s>` pairs) and a
sentence-transformers-saved CrossEncoder whose config names the Identity activation. Weights are drawn
with initializer_range 0.3, so scores spread far enough apart for rankings to mean something.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WORDS = (
    "the a an man woman is are eating food bread piece of cat dog sat on mat quick brown fox jumps "
    "over lazy red blue green house car tree river city music book".split()
)

#: Pairs with long documents (truncated at 64 tokens), an empty one, unknown words and repeats.
PAIRS = [
    ("the man", "a man is eating food"),
    ("the man", "a woman is eating a piece of bread"),
    ("a cat", "the cat sat on the mat " * 20),
    ("quick brown fox", ""),
    ("zebra unknown", "the lazy dog"),
    ("the man", "a man is eating food"),
    ("red house " * 40, "green tree"),
    ("music", "a book about music in the city"),
]


@pytest.fixture(scope="session", autouse=True)
def _offline() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


def _bert(save: Callable[..., Path], folder: Path, num_labels: int, seed: int) -> Path:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##s", "##ing"]
    return save(folder, vocab, seed, "BertForSequenceClassification", num_labels=num_labels, initializer_range=0.3)


@pytest.fixture(scope="session")
def ce_bert(tmp_path_factory: pytest.TempPathFactory, save_tiny_bert: Callable[..., Path]) -> Path:
    """A BertForSequenceClassification with one label, as a plain transformers checkpoint."""
    return _bert(save_tiny_bert, tmp_path_factory.mktemp("ce-bert") / "model", 1, 0)


@pytest.fixture(scope="session")
def ce_bert3(tmp_path_factory: pytest.TempPathFactory, save_tiny_bert: Callable[..., Path]) -> Path:
    """A BertForSequenceClassification with three labels (an NLI-style cross-encoder)."""
    return _bert(save_tiny_bert, tmp_path_factory.mktemp("ce-bert3") / "model", 3, 1)


@pytest.fixture(scope="session")
def ce_xlmr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An XLMRobertaForSequenceClassification with a Unigram tokenizer, max 40 tokens."""
    import torch
    import transformers

    folder = tmp_path_factory.mktemp("ce-xlmr") / "model"
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -1.0) for w in WORDS] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    vocab += [("▁", -3.0), ("<mask>", 0.0)]
    transformers.XLMRobertaTokenizer(vocab=vocab, model_max_length=40).save_pretrained(folder)
    torch.manual_seed(2)
    config = transformers.XLMRobertaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=42,
        num_labels=1,
        initializer_range=0.3,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    transformers.XLMRobertaForSequenceClassification(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def ce_st_identity(ce_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ce_bert` saved by sentence-transformers' CrossEncoder with activation_fn=Identity (raw logits by default)."""
    import torch
    from sentence_transformers import CrossEncoder

    folder = tmp_path_factory.mktemp("ce-st") / "model"
    CrossEncoder(str(ce_bert), local_files_only=True, activation_fn=torch.nn.Identity()).save(str(folder))
    return folder


@pytest.fixture(scope="session")
def ce_minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled all-MiniLM-L6-v2 encoder (trained weights, 6 layers, 384 wide) under a seeded one-label head,
    as bench/rerank.py builds it: a cross-encoder of ms-marco-MiniLM-L6-v2's size whose activations are a real
    model's (int8 of a tiny random model cannot keep a ranking; a trained encoder's can)."""
    import torch
    import transformers

    from embedstack.providers.hub import DEFAULT_MODEL, locate_model

    source = locate_model(DEFAULT_MODEL).path
    folder = tmp_path_factory.mktemp("ce-minilm") / "model"
    config = transformers.BertConfig.from_pretrained(str(source), num_labels=1)
    config.architectures = ["BertForSequenceClassification"]
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    model.bert.load_state_dict(transformers.BertModel.from_pretrained(str(source)).state_dict(), strict=True)
    model.eval().save_pretrained(str(folder))
    transformers.AutoTokenizer.from_pretrained(str(source)).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def ce_st_lowercase(tmp_path_factory: pytest.TempPathFactory, save_tiny_bert: Callable[..., Path]) -> Path:
    """A CrossEncoder saved by sentence-transformers over a cased BERT tokenizer with Σ's lower cases (σ, ς) in its
    vocabulary, its sentence_bert_config.json then told do_lower_case (as a hand-edited or older config says it)."""
    import json

    from sentence_transformers import CrossEncoder

    root = tmp_path_factory.mktemp("ce-lower")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "σ", "ς", "ab", "##σ", "##ς", "[", "]", "sep"]
    head = "BertForSequenceClassification"
    cased = {"do_lower_case": False}
    save_tiny_bert(root / "plain", vocab, 3, head, tokenizer=cased, num_labels=1, initializer_range=0.3)
    folder = root / "model"
    CrossEncoder(str(root / "plain"), local_files_only=True).save(str(folder))
    st_config = json.loads((folder / "sentence_bert_config.json").read_text())
    (folder / "sentence_bert_config.json").write_text(json.dumps({**st_config, "do_lower_case": True}))
    return folder
