"""similarity, mean_agg, Pooling, nodes, callbacks, registry and Settings."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack import (
    FakeEmbedding,
    MockEmbedding,
    MockMultiModalEmbedding,
    Pooling,
    Settings,
    SimilarityMode,
    mean_agg,
    resolve_embed_model,
    similarity,
)
from embedstack.callbacks import CallbackManager, CBEventType
from embedstack.schema import ImageNode, MetadataMode, TextNode
from embedstack.vectors import cosine_top_k


def test_similarity_modes() -> None:
    a, b = [1.0, 0.0], [1.0, 1.0]
    assert similarity(a, b) == pytest.approx(1 / math.sqrt(2))
    assert similarity(a, b, SimilarityMode.DOT_PRODUCT) == 1.0
    assert similarity(a, b, SimilarityMode.EUCLIDEAN) == -1.0
    assert similarity([0.0, 0.0], b) == 0.0
    assert isinstance(similarity(a, b, SimilarityMode.DOT_PRODUCT), float)
    with pytest.raises(ValueError, match="differ in shape"):
        similarity([1.0], [1.0, 2.0])


def test_mean_agg() -> None:
    assert mean_agg([[1.0, 2.0], [3.0, 4.0]]) == [2.0, 3.0]
    with pytest.raises(ValueError, match="No embeddings to aggregate"):
        mean_agg([])


def test_cosine_top_k() -> None:
    mat = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    top = cosine_top_k([1.0, 0.1], mat, k=2)
    assert [i for i, _ in top] == [0, 2]
    assert top[0][1] > top[1][1]
    assert len(cosine_top_k([1.0, 0.0], mat, k=10)) == 4
    assert cosine_top_k([1.0, 0.0], mat[:0], k=3) == []


def test_pooling_numpy() -> None:
    arr = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(Pooling.CLS(arr), arr[:, 0])
    np.testing.assert_array_equal(Pooling.MEAN(arr), arr.mean(axis=1))
    np.testing.assert_array_equal(Pooling.CLS(arr[0]), arr[0, 0])
    np.testing.assert_array_equal(Pooling.MEAN(arr[0]), arr[0].mean(axis=0))
    assert Pooling("cls") is Pooling.CLS and Pooling.MEAN == "mean"
    with pytest.raises(NotImplementedError, match=r"Unhandled shape \(24,\)"):
        Pooling.MEAN(np.zeros(24))
    with pytest.raises(NotImplementedError, match="Unhandled shape"):
        Pooling.CLS(np.zeros((1, 2, 3, 4)))
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_allclose(Pooling.masked_mean(arr, mask), np.stack([arr[0, :2].mean(0), arr[1, 0]]))


def test_pooling_torch() -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert torch.equal(Pooling.CLS(t), t[:, 0])
    assert torch.allclose(Pooling.MEAN(t), t.mean(dim=1))
    assert torch.allclose(Pooling.MEAN(t[0]), t[0].mean(dim=0))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.allclose(Pooling.masked_mean(t, mask), torch.stack([t[0, :2].mean(0), t[1, 0]]))


def test_pooling_does_not_import_torch() -> None:
    code = (
        "import sys, numpy as np; from embedstack import Pooling; "
        "Pooling.MEAN(np.ones((2,3))); print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_text_node_content_modes() -> None:
    node = TextNode(text="body", metadata={"title": "T", "secret": "S"}, excluded_embed_metadata_keys=["secret"])
    assert node.get_content() == "body"
    assert node.get_content(MetadataMode.ALL) == "title: T\nsecret: S\n\nbody"
    assert node.get_content(MetadataMode.EMBED) == "title: T\n\nbody"
    assert TextNode("positional").text == "positional"
    with pytest.raises(ValueError, match="has no embedding"):
        node.get_embedding()


async def test_call_and_acall_embed_nodes_in_embed_mode() -> None:
    m = FakeEmbedding()
    nodes = [
        TextNode(text=f"n{i}", metadata={"k": i, "hidden": "x"}, excluded_embed_metadata_keys=["hidden"])
        for i in range(3)
    ]
    out = m(nodes)
    assert out is nodes
    assert nodes[1].embedding == m.vector_for("k: 1\n\nn1").tolist()
    nodes2 = [TextNode(text="a")]
    await m.acall(nodes2)
    assert nodes2[0].embedding == m.vector_for("a").tolist()


def test_image_node_resolves() -> None:
    import base64

    assert ImageNode(image=base64.b64encode(b"abc").decode()).resolve_image() == b"abc"
    assert ImageNode(image_path="/x.png").resolve_image() == "/x.png"
    with pytest.raises(ValueError, match="has no image"):
        ImageNode().resolve_image()


def test_callback_manager_trace_map() -> None:
    cm = CallbackManager()
    with cm.as_trace("query"):
        with cm.event(CBEventType.QUERY) as outer:
            cm.on_event_start(CBEventType.EMBEDDING, event_id="e1")
            cm.on_event_end(CBEventType.EMBEDDING, event_id="e1")
    assert cm.trace_map["root"] == [outer._event_id]
    assert cm.trace_map[outer._event_id] == ["e1"]


def test_resolve_none(capsys: pytest.CaptureFixture[str]) -> None:
    m = resolve_embed_model(None)
    assert isinstance(m, MockEmbedding) and m.embed_dim == 1
    assert "explicitly disabled" in capsys.readouterr().out


def test_resolve_default_when_testing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IS_TESTING", "1")
    m = resolve_embed_model("default")
    assert isinstance(m, MockEmbedding) and m.embed_dim == 8


def test_resolve_instance_and_callback_manager() -> None:
    cm = CallbackManager()
    m = FakeEmbedding()
    assert resolve_embed_model(m, callback_manager=cm) is m
    assert m.callback_manager is cm
    assert resolve_embed_model(MockMultiModalEmbedding(embed_dim=2)).callback_manager is Settings.callback_manager


@pytest.mark.parametrize("bad", ["nope", "localx", "definitely:not"])
def test_resolve_unknown_lists_forms(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        resolve_embed_model(bad)
    msg = str(e.value)
    assert repr(bad) in msg and '"local"' in msg and '"default"' in msg


def test_resolve_non_model_object() -> None:
    with pytest.raises(ValueError, match="cannot use int"):
        resolve_embed_model(42)


def test_resolve_fake_spec() -> None:
    assert resolve_embed_model("fake:5").embed(["x"]).shape == (1, 5)
    with pytest.raises(ValueError, match="integer"):
        resolve_embed_model("fake:abc")


def test_settings_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IS_TESTING", "1")
    monkeypatch.setattr(Settings, "_embed_model", None)
    assert isinstance(Settings.embed_model, MockEmbedding)
    Settings.embed_model = FakeEmbedding(embed_dim=3)
    assert Settings.embed_model.embed(["a"]).shape == (1, 3)
    monkeypatch.setattr(Settings, "_embed_model", None)


def test_images_through_the_pipeline(tmp_path: Path) -> None:
    from embedstack.kvstore import SimpleKVStore

    a = tmp_path / "a.png"
    b = tmp_path / "copy-of-a.png"
    a.write_bytes(b"same-bytes")
    b.write_bytes(b"same-bytes")
    m = FakeEmbedding(embeddings_cache=SimpleKVStore())
    vecs = m.get_image_embedding_batch([a, str(b), b"same-bytes", b"other"])
    assert vecs[0] == vecs[1] == vecs[2] != vecs[3]
    assert [len(items) for _, items in m.calls] == [2]  # one per distinct content
    with pytest.raises(FileNotFoundError, match=r"img_file_paths\[1\].*missing.png"):
        m.get_image_embedding_batch([a, tmp_path / "missing.png"])
    with pytest.raises(TypeError, match=r"img_file_path\[0\] is int"):
        m.get_image_embedding(5)
    assert len(m.calls) == 1


def test_non_seekable_stream_is_read_once_with_a_cache() -> None:
    import io

    from embedstack.kvstore import SimpleKVStore

    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def seekable(self) -> bool:
            return False

        def readinto(self, b: Any) -> int:
            return self.buf.readinto(b)

    m = FakeEmbedding(embeddings_cache=SimpleKVStore())
    assert m.get_image_embedding(Pipe(b"pixels")) == m.get_image_embedding(b"pixels")
    assert m.embedded == [b"pixels"]


def test_palette_images_with_different_palettes_differ() -> None:
    Image = pytest.importorskip("PIL.Image")
    from embedstack.kvstore import SimpleKVStore

    a = Image.new("P", (2, 2))
    a.putpalette([255, 0, 0] * 256)
    b = Image.new("P", (2, 2))
    b.putpalette([0, 0, 255] * 256)
    m = FakeEmbedding(embeddings_cache=SimpleKVStore())
    assert m.get_image_embedding(a) != m.get_image_embedding(b)


def test_image_role_on_text_only_model() -> None:
    with pytest.raises(TypeError, match="does not embed images"):
        MockEmbedding(embed_dim=2).embed([b"x"], role="image")


def test_mock_multimodal_file_objects(tmp_path: Path) -> None:
    import io

    p = tmp_path / "x.bin"
    p.write_bytes(b"pixels")
    m = FakeEmbedding()
    with open(p, "rb") as f:
        v1 = m.get_image_embedding(f)
        assert f.tell() == 0  # position restored after reading for the key
    assert v1 == m.get_image_embedding(io.BytesIO(b"pixels"))
    assert v1 == m.get_image_embedding("data:image/png;base64," + __import__("base64").b64encode(b"pixels").decode())


def _noop(*a: Any) -> None:
    return None


def test_one_top_k_one_tie_rule_one_rescoring_default() -> None:
    """cosine_top_k, rescoring and chunked search share one top-k: equal scores go to the lower row; binary search's
    default candidates per hit is the CLI's."""
    import inspect

    from embedstack.jobs import DEFAULT_RESCORE as jobs_default
    from embedstack.vectors import DEFAULT_RESCORE, binary_top_k, rescore, top_k

    mat = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    assert [i for i, _ in cosine_top_k([1.0, 0.0], mat, k=3)] == [1, 3, 4]  # three ties: rows in order
    assert top_k(np.array([0.5, 0.9, 0.9, 0.1]), 2).tolist() == [1, 2]
    assert top_k(np.array([3, 1, 1, 2]), 3, largest=False).tolist() == [1, 2, 3]
    assert [i for i, _ in rescore([1.0, 0.0], [4, 3, 1], mat, 2)] == [3, 1]  # 2.0 first, then the 1.0 tie: row 1
    assert inspect.signature(binary_top_k).parameters["rescore_multiplier"].default == DEFAULT_RESCORE == jobs_default
