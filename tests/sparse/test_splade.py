"""SPLADE on tiny random masked-LM models the tests build, against sentence-transformers' SparseEncoder
on the same weights: same indices, values within 1e-5 (torch and ONNX Runtime fp32), query and document
sides, inference-free SPLADE's lookup-table query side, max_active_dims, decode and the registry."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack import BaseSparseEmbedding, resolve_embed_model
from embedstack.kvstore import SQLiteKVStore
from embedstack.providers.splade import SpladeEmbedding, SpladeModelError
from embedstack.sparse import sparse_dot
from embedstack.types import Role

pytestmark = pytest.mark.slow

TEXTS = [
    "the cat sat on the mat",
    "a dog",
    "the quick brown fox jumps over the lazy dog " * 12,  # truncated to the model's 64 tokens
    "cats eating",
    "unknownword",
]


@dataclass(frozen=True)
class Tiny:
    splade: Path  # [MLMTransformer, SpladePooling(max, relu)]
    inference_free: Path  # Router: query = SparseStaticEmbedding, document = MLM + SpladePooling
    sum_log1p: Path  # SpladePooling(sum, log1p_relu), prompts and a max_active_dims in its config
    plain: Path  # a plain transformers BertForMaskedLM checkpoint (no modules.json)
    fill_mask: Path  # sentence-transformers 6's spelling: Transformer(transformer_task="fill-mask") + SpladePooling


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_bert_checkpoint: Path) -> Tiny:
    import torch
    import transformers
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling

    root = tmp_path_factory.mktemp("tiny-splade")
    plain = root / "plain"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_bert_checkpoint))
    tokenizer.save_pretrained(plain)
    torch.manual_seed(1)
    config = transformers.BertConfig.from_pretrained(str(tiny_bert_checkpoint))
    transformers.BertForMaskedLM(config).eval().save_pretrained(plain)

    SparseEncoder(modules=[MLMTransformer(str(plain)), SpladePooling("max")]).save(str(root / "splade"))
    doc = MLMTransformer(str(plain))
    weights = torch.rand(config.vocab_size)
    weights[5] = 0.0  # a token with no weight: absent from query vectors
    static = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=weights, frozen=True)
    router = Router.for_query_document(query_modules=[static], document_modules=[doc, SpladePooling("max")])
    SparseEncoder(modules=[router], similarity_fn_name="dot").save(str(root / "ifree"))
    SparseEncoder(
        modules=[MLMTransformer(str(plain)), SpladePooling("sum", activation_function="log1p_relu")],
        prompts={"query": "query: ", "document": "passage: "},
        max_active_dims=6,
    ).save(str(root / "sum"))
    from sentence_transformers.base.modules import Transformer

    SparseEncoder(modules=[Transformer(str(plain), transformer_task="fill-mask"), SpladePooling("max")]).save(
        str(root / "fill-mask")
    )
    return Tiny(root / "splade", root / "ifree", root / "sum", plain, root / "fill-mask")


def _reference(path: Path, role: str, texts: list[str], **kwargs: Any) -> np.ndarray:
    from sentence_transformers import SparseEncoder

    st = SparseEncoder(str(path), device="cpu")
    encode = st.encode_query if role == "query" else st.encode_document
    return encode(texts, **kwargs).to_dense().numpy()  # type: ignore[no-any-return]


def _assert_same(ours: list[Any], ref: np.ndarray) -> None:
    assert len(ours) == len(ref)
    for row, want in zip(ours, ref):
        nz = np.flatnonzero(want)
        assert row.indices.tolist() == nz.tolist()
        assert np.abs(row.values - want[nz]).max(initial=0.0) <= 1e-5


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("which", ["splade", "inference_free", "sum_log1p", "fill_mask"])
@pytest.mark.parametrize("role", ["query", "text"])
def test_equal_to_sentence_transformers_sparse_encoder(
    tiny: Tiny, which: str, role: str, backend: str, private_cache_dirs: Path
) -> None:
    path = getattr(tiny, which)
    model = SpladeEmbedding(model_name=str(path), backend=backend)
    ours = model.embed(TEXTS, role)
    _assert_same(ours, _reference(path, "query" if role == "query" else "document", TEXTS))
    assert isinstance(model, BaseSparseEmbedding)


def test_inference_free_queries_are_a_lookup_table(tiny: Tiny) -> None:
    from safetensors.numpy import load_file

    model = SpladeEmbedding(model_name=str(tiny.inference_free))
    table = load_file(str(tiny.inference_free / "query_0_SparseStaticEmbedding" / "model.safetensors"))["weight"]
    vocab = json.loads((tiny.plain / "tokenizer.json").read_text())["model"]["vocab"]
    got = model.get_query_embedding("cat cat dog")
    assert got == pytest.approx({vocab["cat"]: float(table[vocab["cat"]]), vocab["dog"]: float(table[vocab["dog"]])})


@pytest.mark.parametrize("k", [1, 3, 10])
def test_max_active_dims_keeps_the_largest_weights_as_sentence_transformers(tiny: Tiny, k: int) -> None:
    ours = SpladeEmbedding(model_name=str(tiny.splade), max_active_dims=k).embed(TEXTS)
    _assert_same(ours, _reference(tiny.splade, "document", TEXTS, max_active_dims=k))
    assert all(len(r.indices) <= k for r in ours)


def test_a_plain_masked_lm_checkpoint_is_max_pooled_relu(tiny: Tiny) -> None:
    plain = SpladeEmbedding(model_name=str(tiny.plain)).embed(TEXTS)
    via_st = SpladeEmbedding(model_name=str(tiny.splade)).embed(TEXTS)
    for a, b in zip(plain, via_st):
        assert a.indices.tolist() == b.indices.tolist() and np.array_equal(a.values, b.values)


def test_decode_explains_a_vector_in_tokens(tiny: Tiny) -> None:
    model = SpladeEmbedding(model_name=str(tiny.inference_free))
    pairs = model.decode(model.get_query_embedding("cat dog"))
    assert {t for t, _ in pairs} == {"cat", "dog"} and pairs[0][1] >= pairs[1][1]
    assert len(model.decode(model.get_text_embedding("cat dog"), top_k=2)) == 2


def test_registry_cache_async_and_token_counts(tiny: Tiny, tmp_path: Path) -> None:
    model = resolve_embed_model(f"splade:{tiny.splade}")
    assert isinstance(model, SpladeEmbedding) and model.backend == "torch"
    assert isinstance(resolve_embed_model(f"splade:onnx:{tiny.splade}"), SpladeEmbedding)
    model.embeddings_cache = SQLiteKVStore(tmp_path / "c.sqlite")
    out = model.pipeline.embed(TEXTS)
    assert out.usage.computed == len(TEXTS) and out.truncated is not None and out.truncated.tolist()[2]
    again = SpladeEmbedding(model_name=str(tiny.splade), embeddings_cache=SQLiteKVStore(tmp_path / "c.sqlite"))
    second = again.pipeline.embed(TEXTS)
    assert second.usage.cached == len(TEXTS)
    assert [r.to_dict() for r in second.values] == [r.to_dict() for r in out.values]
    fresh = SpladeEmbedding(model_name=str(tiny.splade), embeddings_cache=SQLiteKVStore(tmp_path / "c.sqlite"))
    assert fresh.pipeline.cached(TEXTS).found.all() and fresh._loaded is None  # hits: no weights loaded
    assert asyncio.run(again.aget_text_embedding_batch(TEXTS)) == [r.to_dict() for r in out.values]
    with pytest.raises(ValueError, match="splade needs a model"):
        resolve_embed_model("splade")


def test_an_unsupported_module_chain_is_refused_by_name(tiny: Tiny, tmp_path: Path) -> None:
    import shutil

    odd = tmp_path / "odd"
    shutil.copytree(tiny.splade, odd)
    modules = json.loads((odd / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.base.modules.Dense"})
    (odd / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(SpladeModelError, match=r"use sentence_transformers\.SparseEncoder"):
        SpladeEmbedding(model_name=str(odd)).embed(["a"])


def test_int8_vectors_are_keyed_by_the_quantisers_version(tiny: Tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime quantises the int8 logits graph: another version, another key; fp32 keys stay."""
    from embedstack.providers.huggingface import onnx_export

    def key(precision: str) -> str:
        model = SpladeEmbedding(model_name=str(tiny.splade), backend="onnx", precision=precision)
        return model.pipeline.key_factory(Role.TEXT)("a cat")

    int8, fp32 = key("int8"), key("fp32")
    real = onnx_export._version
    monkeypatch.setattr(onnx_export, "_version", lambda d: "0.0-other" if d == "onnxruntime" else real(d))
    assert key("int8") != int8 and key("fp32") == fp32


def test_int8_is_a_fast_mode_close_to_fp32_or_refused_by_name(
    tiny: Tiny, private_cache_dirs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from embedstack.providers.huggingface import onnx_export
    from embedstack.providers.huggingface.onnx_export import ExportError

    fp32 = SpladeEmbedding(model_name=str(tiny.splade), backend="onnx").embed(TEXTS)
    int8 = SpladeEmbedding(model_name=str(tiny.splade), backend="onnx", precision="int8")
    assert (
        int8.pipeline.provider.model_identity()
        == SpladeEmbedding(model_name=str(tiny.splade)).provider.model_identity()
    )
    width = int8._vocab_size()
    assert width is not None
    for a, b in zip(int8.embed(TEXTS), fp32):
        x, y = np.zeros(width), np.zeros(width)
        x[a.indices], y[b.indices] = a.values, b.values
        assert x @ y / (np.linalg.norm(x) * np.linalg.norm(y)) >= 0.99
    with pytest.raises(ValueError, match="runs on backend='onnx'"):
        SpladeEmbedding(model_name=str(tiny.splade), precision="int8")
    monkeypatch.setattr(onnx_export, "INT8_MIN_MEAN_COSINE", 1.01)  # fault: a bar no graph can pass
    with pytest.raises(ExportError, match=r"int8 changes .* too much.*use precision='fp32'"):
        SpladeEmbedding(model_name=str(tiny.sum_log1p), backend="onnx", precision="int8").embed(["a"])


def test_splade_vectors_beside_dense_ones_in_an_output(tiny: Tiny, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from embedstack.jobs import embed_records, read_meta
    from embedstack.jobs._sparse import hybrid_search, sparse_model_of

    out = tmp_path / "out.parquet"
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    embed_records(rows, out, model="fake:16", cache=None, sparse=f"splade:{tiny.splade}")
    table = pq.read_table(out)
    want = SpladeEmbedding(model_name=str(tiny.splade)).embed(TEXTS)
    assert table.column("sparse_indices").to_pylist() == [r.indices.tolist() for r in want]
    assert table.column("sparse_values").to_pylist() == [r.values.tolist() for r in want]
    assert isinstance(sparse_model_of(out, read_meta(out)), SpladeEmbedding)
    query = "the cat sat on the mat"
    q = SpladeEmbedding(model_name=str(tiny.splade)).get_query_embedding(query)
    scores = [sparse_dot(q, r.to_dict()) for r in want]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    hits = hybrid_search(out, query, 2, cache=None, fusion="convex", alpha=0.0)
    assert hits[0].id == f"d{best}" and hits[0].fields["sparse_rank"] == 1


def test_splade_vectors_alone_and_appended_in_jsonl_and_npy_outputs(tiny: Tiny, tmp_path: Path) -> None:
    from embedstack.jobs import embed_records, load_embeddings, search

    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(TEXTS)]
    spec = f"splade:{tiny.splade}"
    want = SpladeEmbedding(model_name=str(tiny.splade)).embed(TEXTS)
    for out, dense in ((tmp_path / "alone.jsonl", None), (tmp_path / "beside.npy", "fake:8")):
        embed_records(rows[:2], out, model=dense, cache=None, sparse=spec)
        embed_records(rows[2:], out, model=dense, cache=None, sparse=spec, append=True)
        got = load_embeddings(out).sparse
        assert got is not None and [r.indices.tolist() for r in got] == [r.indices.tolist() for r in want]
        for a, b in zip(got, want):  # other batches (other padding): equal up to float rounding
            np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6)
    query = "the cat sat on the mat"
    q = SpladeEmbedding(model_name=str(tiny.splade)).get_query_embedding(query)
    scores = [sparse_dot(q, r.to_dict()) for r in want]
    hits = search(tmp_path / "alone.jsonl", query, 3, cache=None)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:3]
    assert [h.id for h in hits] == [f"d{i}" for i in order if scores[i] > 0]
    assert [h.score for h in hits] == pytest.approx([scores[i] for i in order if scores[i] > 0], rel=1e-5)


def test_embed_sparse_refuses_truncation_unless_asked(tiny: Tiny) -> None:
    import httpx

    from embedstack.server import create_app

    model = SpladeEmbedding(model_name=str(tiny.splade))
    app = create_app({"splade": model}, warm_up=False)

    async def run() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                refused = await client.post("/embed_sparse", json={"inputs": ["a dog", TEXTS[2]]})
                cut = await client.post("/embed_sparse", json={"inputs": ["a dog", TEXTS[2]], "truncate": True})
                return refused, cut

    refused, cut = asyncio.run(run())
    assert refused.status_code == 400 and "inputs[1]" in refused.json()["error"]["message"]
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert cut.status_code == 200
    want = model.embed(["a dog", TEXTS[2]])
    assert cut.json() == [
        [{"index": i, "value": v} for i, v in zip(r.indices.tolist(), r.values.tolist())] for r in want
    ]


def test_max_active_dims_breaks_ties_by_the_lower_index() -> None:
    from embedstack.providers.splade import top_k

    rows = np.array([[0.0, 1.0, 2.0, 1.0, 1.0, 0.0]], dtype=np.float32)
    kept = top_k(rows, 3)[0]
    assert kept.indices.tolist() == [1, 2, 3] and kept.values.tolist() == [1.0, 2.0, 1.0]
    assert top_k(rows, None)[0].indices.tolist() == [1, 2, 3, 4]


def test_each_text_is_tokenised_once_in_the_library_and_on_the_server(
    tiny: Tiny, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from embedstack.providers.splade import _Tokenizer
    from embedstack.server import create_app

    model = SpladeEmbedding(model_name=str(tiny.sum_log1p), embed_batch_size=2)  # prompts: tokens carry them
    assert model.provider.capabilities.prepares
    seen: list[str] = []
    real = _Tokenizer.encode

    def spying(self: _Tokenizer, texts: list[str]) -> Any:
        seen.extend(texts)
        return real(self, texts)

    monkeypatch.setattr(_Tokenizer, "encode", spying)  # every text any SPLADE tokenizer sees
    batch = [*TEXTS, "a fifth text", "and a sixth"]
    rows = model.embed(batch, "query")  # several batches, one tokenising pass
    assert sorted(seen) == sorted("query: " + t for t in batch)
    _assert_same(rows, _reference(tiny.sum_log1p, "query", batch))  # sorted and batched: still exact

    app = create_app({"s": model})
    seen.clear()

    async def run() -> httpx.Response:
        async with app.router.lifespan_context(app):
            await app.state.embedstack.loaded.wait()
            seen.clear()  # the warm-up's text
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
                return await client.post("/embed_sparse", json={"inputs": batch, "truncate": True})

    answer = asyncio.run(run())
    assert answer.status_code == 200, answer.text
    assert sorted(seen) == sorted("passage: " + t for t in batch)  # on arrival only, never again in the batch
    served = [{int(e["index"]): e["value"] for e in row} for row in answer.json()]
    want = _reference(tiny.sum_log1p, "document", batch)
    for row, ref in zip(served, want):
        assert sorted(row) == np.flatnonzero(ref).tolist()
        assert max(abs(v - ref[i]) for i, v in row.items()) <= 1e-5


@pytest.fixture(scope="module")
def cased(tmp_path_factory: pytest.TempPathFactory, save_tiny_bert: Callable[..., Path]) -> tuple[Path, Path]:
    """(a legacy SPLADE directory whose sentence_bert_config says do_lower_case over a cased tokenizer with Σ, σ
    and ς in its vocabulary; a plain masked-LM checkpoint whose tokenizer allows 512 tokens and model 64)."""
    from sentence_transformers import SparseEncoder
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SpladePooling

    root = tmp_path_factory.mktemp("cased-splade")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cat", "dog", "the", "mask", "ab", "σ", "ς", "##σ", "##ς"]
    vocab += ["[", "]"]
    plain = save_tiny_bert(
        root / "plain", vocab, 3, "BertForMaskedLM", tokenizer={"do_lower_case": False, "model_max_length": 512}
    )
    legacy = root / "legacy"
    SparseEncoder(modules=[MLMTransformer(str(plain)), SpladePooling("max")]).save(str(legacy))
    modules = json.loads((legacy / "modules.json").read_text())
    modules[0]["type"] = "sentence_transformers.sparse_encoder.models.MLMTransformer"  # as 5.x saved it
    (legacy / "modules.json").write_text(json.dumps(modules))
    (legacy / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    return legacy, plain


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_do_lower_case_lowercases_as_the_tokenizer_normaliser_does(
    cased: tuple[Path, Path], backend: str, private_cache_dirs: Path
) -> None:
    # sentence-transformers puts a Lowercase normaliser first in the tokenizer: a word-final Σ becomes σ (str.lower
    # gives ς: relative error 0.32 seen) and "[MASK]" stays the special token (str.lower made it "[mask]").
    legacy, _ = cased
    texts = ["abΣ cat", "the [MASK] cat", "ΑΣ dog [SEP]", "Σ"]
    model = SpladeEmbedding(model_name=str(legacy), backend=backend)
    _assert_same(model.embed(texts), _reference(legacy, "document", texts))
    assert model.provider.identity()["lowercase"] == "normaliser"  # vectors cached by the older lower-casing miss


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_token_limit_is_capped_at_the_model_positions(
    cased: tuple[Path, Path], backend: str, private_cache_dirs: Path
) -> None:
    # The tokenizer allows 512 tokens, the model has 64 positions: sentence-transformers cuts at 64 (a 182-token
    # text made torch raise a size mismatch).
    _, plain = cased
    texts = ["the cat " * 90, "dog", "cat " * 63]
    model = SpladeEmbedding(model_name=str(plain), backend=backend)
    _assert_same(model.embed(texts), _reference(plain, "document", texts))
    counts, cut = model._count_tokens(texts, Role.TEXT) or ([], [])
    assert counts[0] == 64 and cut[0]


def test_per_role_token_limits_and_processing_kwargs_are_refused_by_name(
    cased: tuple[Path, Path], tmp_path: Path
) -> None:
    import shutil

    legacy, _ = cased
    for key, value in (("document_length", 8), ("processing_kwargs", {"text": {"max_length": 8}})):
        path = tmp_path / key
        shutil.copytree(legacy, path)
        (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, key: value}))
        with pytest.raises(SpladeModelError, match=key):
            SpladeEmbedding(model_name=str(path)).embed(["cat"])


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_left_padding_tokenizer_gives_each_text_its_vector_alone(
    tiny: Tiny, backend: str, tmp_path: Path, private_cache_dirs: Path
) -> None:
    # padding_side='left' in tokenizer_config.json shifts a BERT's absolute positions by each row's padding:
    # sentence-transformers' vectors then depend on the batch (0.14 apart); ours were too. Padding on the right,
    # every text gets the vector it has alone.
    import shutil

    path = tmp_path / "left"
    shutil.copytree(tiny.splade, path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    texts = ["a dog", "the quick brown fox jumps over the lazy dog", "cat"]
    together = SpladeEmbedding(model_name=str(path), backend=backend, embed_batch_size=8).embed(texts)
    alone = np.concatenate([_reference(path, "document", [t]) for t in texts])
    _assert_same(together, alone)


@pytest.fixture(scope="module")
def half_saved(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[Path, Path]]:
    """dtype name → (a SparseEncoder over the tiny masked LM saved in that dtype, the same as a Router whose
    document route is that masked LM in a folder of its own), built once per dtype."""
    import torch
    import transformers
    from sentence_transformers import SparseEncoder
    from sentence_transformers.base.modules import Router
    from sentence_transformers.sparse_encoder.modules import MLMTransformer, SparseStaticEmbedding, SpladePooling

    built: dict[str, tuple[Path, Path]] = {}

    def build(dtype: str) -> tuple[Path, Path]:
        if dtype not in built:
            root = tmp_path_factory.mktemp(f"splade-{dtype}")
            plain = root / "plain"
            model = transformers.BertForMaskedLM.from_pretrained(str(tiny.plain))
            model.to(getattr(torch, dtype)).save_pretrained(plain)
            transformers.AutoTokenizer.from_pretrained(str(tiny.plain)).save_pretrained(plain)
            SparseEncoder(modules=[MLMTransformer(str(plain)), SpladePooling("max")]).save(str(root / "splade"))
            doc = MLMTransformer(str(plain))
            torch.manual_seed(3)
            static = SparseStaticEmbedding(tokenizer=doc.tokenizer, weight=torch.rand(model.config.vocab_size))
            router = Router.for_query_document(query_modules=[static], document_modules=[doc, SpladePooling("max")])
            SparseEncoder(modules=[router], similarity_fn_name="dot").save(str(root / "ifree"))
            built[dtype] = root / "splade", root / "ifree"
        return built[dtype]

    return build


@pytest.mark.parametrize("backend", ["torch", "onnx"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_checkpoint_saved_in_half_precision_runs_in_fp32(
    half_saved: Callable[[str], tuple[Path, Path]], dtype: str, backend: str, private_cache_dirs: Path
) -> None:
    """transformers loads a masked LM at its saved dtype: torch computed an fp16-saved SPLADE in fp16 (weights here
    2.4e-4 from fp32's, bf16 1.5e-3; sentence-transformers' SparseEncoder does too unless given dtype float32) under
    the fp32 key, and the ONNX export of the half model was refused (its graph 2.3e-4 from torch's; bf16: no ONNX
    Runtime kernel). Both are now fp32, equal to SparseEncoder loaded with dtype float32, and the key names the saved
    dtype (`fp32_from`: vectors cached at the saved dtype miss), the Router's document route's included."""
    import torch
    from sentence_transformers import SparseEncoder

    for path in half_saved(dtype):
        ref = SparseEncoder(str(path), device="cpu", model_kwargs={"dtype": torch.float32})
        model = SpladeEmbedding(model_name=str(path), backend=backend)
        _assert_same(model.embed(TEXTS, "text"), ref.encode_document(TEXTS).to_dense().numpy())
        _assert_same(model.embed(TEXTS, "query"), ref.encode_query(TEXTS).to_dense().numpy())
        assert model.provider.identity()["fp32_from"] == dtype and "fp32_from" not in model.provider.model_identity()


def test_a_checkpoint_saved_in_fp32_keeps_its_keys(tiny: Tiny) -> None:
    """Only a checkpoint saved in fp16/bf16 is keyed `fp32_from`: an fp32 one's cached vectors stay valid."""
    for path in (tiny.splade, tiny.inference_free, tiny.plain):
        assert "fp32_from" not in SpladeEmbedding(model_name=str(path)).provider.identity()
