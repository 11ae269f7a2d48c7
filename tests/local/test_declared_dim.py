"""A local model declares its vector length from its files before anything loads (issue 22): what
sentence-transformers says on the same directory, or None where the files do not state it plainly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.providers.huggingface.dims import files_dim

pytestmark = pytest.mark.slow  # builds sentence-transformers directories


@pytest.mark.parametrize(
    ("modes", "dense"),
    [(("mean",), None), (("cls",), None), (("mean", "max"), None), (("cls", "mean", "max"), None), (("mean",), 12)],
)
def test_files_dim_is_what_sentence_transformers_reports(
    tmp_path: Path, tiny_bert_checkpoint: Path, modes: tuple[str, ...], dense: int | None
) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    modules = [
        Transformer(str(tiny_bert_checkpoint)),
        Pooling(32, pooling_mode=list(modes) if len(modes) > 1 else modes[0]),
    ]
    if dense:
        modules.append(Dense(32 * len(modes), dense))
    modules.append(Normalize())
    st = SentenceTransformer(modules=modules, device="cpu")
    path = tmp_path / "st"
    st.save(str(path))
    want = getattr(st, "get_embedding_dimension", st.get_sentence_embedding_dimension)()
    assert files_dim(path) == want
    model = HuggingFaceEmbedding(model_name=str(path), backend="torch")
    assert model.provider.output.size == want  # declared, nothing loaded
    assert model._encoder is None


def test_plain_checkpoint_and_unknown_modules(tmp_path: Path, tiny_bert_checkpoint: Path) -> None:
    assert files_dim(tiny_bert_checkpoint) == 32
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "modules.json").write_text(json.dumps([{"idx": 0, "name": "0", "path": "", "type": "mypkg.Custom"}]))
    assert files_dim(odd) is None  # not understood: learned from the first answer, never guessed
    assert files_dim(tmp_path / "missing") is None
