"""Public API surface, fields and validation, LlamaIndex-style subclasses, serialisation."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

import embedstack
from embedstack import BaseEmbedding, FakeEmbedding, MockEmbedding, MockMultiModalEmbedding
from embedstack.callbacks import BaseCallbackHandler, CallbackManager, CBEventType, EventPayload
from embedstack.kvstore import SimpleKVStore


class LegacyModel(BaseEmbedding):
    """Written exactly as a LlamaIndex custom embedding: only the three abstract hooks."""

    @classmethod
    def class_name(cls) -> str:
        return "LegacyModel"

    def _get_query_embedding(self, query: str) -> list[float]:
        return [1.0, float(len(query))]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return [1.0, float(len(query))]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [0.0, float(len(text))]


def test_public_import_paths() -> None:
    from embedstack import (  # noqa: F401
        BaseEmbedding,
        Embedding,
        ImageType,
        MockEmbedding,
        MockMultiModalEmbedding,
        MultiModalEmbedding,
        Pooling,
        Settings,
        SimilarityMode,
        mean_agg,
        resolve_embed_model,
        similarity,
    )
    from embedstack.callbacks import BaseCallbackHandler, CallbackManager, CBEventType, EventPayload  # noqa: F401
    from embedstack.instrumentation import (  # noqa: F401
        BaseEventHandler,
        BaseSpanHandler,
        EmbeddingEndEvent,
        EmbeddingStartEvent,
        get_dispatcher,
    )
    from embedstack.kvstore import BaseKVStore, SimpleKVStore, SQLiteKVStore  # noqa: F401
    from embedstack.schema import BaseNode, ImageNode, MetadataMode, TextNode, TransformComponent  # noqa: F401


def test_import_is_light() -> None:
    code = (
        "import sys, embedstack; heavy = [m for m in ('torch','transformers','sentence_transformers','onnxruntime',"
        "'openai','langchain_core','llama_index','pyarrow','PIL','tiktoken') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_attribute() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        embedstack.NoSuchThing  # noqa: B018


def test_field_defaults() -> None:
    m = LegacyModel()
    assert m.model_name == "unknown"
    assert m.embed_batch_size == 10
    assert isinstance(m.callback_manager, CallbackManager)
    assert m.num_workers is None
    assert m.embeddings_cache is None
    assert LegacyModel(callback_manager=None).callback_manager.handlers == []


@pytest.mark.parametrize("size", [0, -1, 2049])
def test_batch_size_validated(size: int) -> None:
    with pytest.raises(ValidationError):
        LegacyModel(embed_batch_size=size)


def test_batch_size_bounds_accepted() -> None:
    assert LegacyModel(embed_batch_size=1).embed_batch_size == 1
    assert LegacyModel(embed_batch_size=2048).embed_batch_size == 2048


@pytest.mark.parametrize("bad", [{}, "cache.sqlite", 3])
def test_cache_must_be_kvstore(bad: Any) -> None:
    with pytest.raises((TypeError, ValidationError), match="BaseKVStore"):
        LegacyModel(embeddings_cache=bad)


async def test_legacy_subclass_every_public_method() -> None:
    m = LegacyModel(embed_batch_size=2)
    assert m.get_query_embedding("abc") == [1.0, 3.0]
    assert await m.aget_query_embedding("abcd") == [1.0, 4.0]
    assert m.get_text_embedding("ab") == [0.0, 2.0]
    assert await m.aget_text_embedding("a") == [0.0, 1.0]
    texts = ["a", "bbb", "cc", "dddd", "e"]
    assert m.get_text_embedding_batch(texts) == [[0.0, float(len(t))] for t in texts]
    assert await m.aget_text_embedding_batch(texts) == [[0.0, float(len(t))] for t in texts]
    assert m.get_agg_embedding_from_queries(["a", "abc"]) == [1.0, 2.0]
    assert await m.aget_agg_embedding_from_queries(["a", "abc"], agg_fn=lambda e: e[1]) == [1.0, 3.0]
    assert m.similarity([1.0, 0.0], [0.0, 1.0]) == 0.0


def test_mock_embedding() -> None:
    m = MockEmbedding(embed_dim=3)
    assert m.embed_dim == 3
    assert m.get_query_embedding("x") == [0.5] * 3
    assert m.get_text_embedding_batch(["a", "b"]) == [[0.5] * 3] * 2
    assert m.class_name() == "MockEmbedding"
    assert m.to_dict()["class_name"] == "MockEmbedding"
    mm = MockMultiModalEmbedding(embed_dim=2)
    assert mm.class_name() == "MockMultiModalEmbedding"
    assert mm.get_image_embedding(b"\x89PNG") == [0.5, 0.5]


def test_to_dict_round_trip() -> None:
    m = FakeEmbedding(embed_dim=4, embed_batch_size=7, model_name="x")
    d = m.to_dict()
    assert d["class_name"] == "FakeEmbedding"
    assert "callback_manager" not in d and "embeddings_cache" not in d
    again = FakeEmbedding.from_dict(d)
    assert again.embed_dim == 4 and again.embed_batch_size == 7
    assert json.loads(m.to_json())["embed_dim"] == 4
    assert again.get_text_embedding("q") == m.get_text_embedding("q")


def test_models_pickle_after_use() -> None:
    import pickle

    m = FakeEmbedding(embed_dim=4, embeddings_cache=SimpleKVStore())
    v = m.get_text_embedding("x")
    again = pickle.loads(pickle.dumps(m))
    assert again.get_text_embedding("x") == v


class SecretModel(FakeEmbedding):
    api_key: SecretStr = SecretStr("")


SECRET = "sk-THIS-MUST-NEVER-LEAK-123"


class PayloadRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__([], [])
        self.payloads: list[Any] = []

    def on_event_start(
        self, event_type: Any, payload: Any = None, event_id: str = "", parent_id: str = "", **kw: Any
    ) -> str:
        self.payloads.append((event_type, payload))
        return event_id

    def on_event_end(self, event_type: Any, payload: Any = None, event_id: str = "", **kw: Any) -> None:
        self.payloads.append((event_type, payload))

    def start_trace(self, trace_id: str | None = None) -> None:
        pass

    def end_trace(self, trace_id: str | None = None, trace_map: Any = None) -> None:
        pass


def test_secrets_never_leak(event_recorder: Any, caplog: pytest.LogCaptureFixture) -> None:
    rec = PayloadRecorder()
    m = SecretModel(
        api_key=SecretStr(SECRET), callback_manager=CallbackManager([rec]), embeddings_cache=SimpleKVStore()
    )
    m.get_text_embedding_batch(["a", "b"])
    surfaces = [
        repr(m),
        str(m),
        m.to_json(),
        json.dumps(m.to_dict()),
        repr(event_recorder.events),
        repr(rec.payloads),
        caplog.text,
    ]
    for s in surfaces:
        assert SECRET not in s
    assert m.api_key.get_secret_value() == SECRET
    # the callback payload carried the model description, without the key
    serialized = [p[EventPayload.SERIALIZED] for t, p in rec.payloads if p and EventPayload.SERIALIZED in p]
    assert serialized and all("api_key" not in s for s in serialized)
    assert rec.payloads[0][0] == CBEventType.EMBEDDING


def test_unknown_settings_warn_by_name_with_the_likely_one() -> None:
    """A misspelt setting was silently ignored (normalise=False gave normalised vectors); it still is, as in
    LlamaIndex, but a warning names it and the setting meant."""
    with pytest.warns(UserWarning, match=r"'embed_batch_sise' \(did you mean 'embed_batch_size'\?\).*ignored") as info:
        model = MockEmbedding(embed_dim=4, embed_batch_sise=3)
    assert model.embed_batch_size != 3 and info[0].filename == __file__  # points at the caller's line
    with pytest.warns(UserWarning, match=r"no setting 'base_url': ignored"):  # no api_base here: no hint
        MockEmbedding(embed_dim=4, base_url="http://127.0.0.1:9/v1")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MockEmbedding.from_dict(MockEmbedding(embed_dim=4, embed_batch_size=3).to_dict())  # known settings: silent
