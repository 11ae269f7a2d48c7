"""The files stamp in cache keys is a content hash: weights rewritten in place with the same size and a preserved
mtime (``cp -p``, ``touch -r``, ``rsync -t``) are a new key; the same files are the same key on any machine; an
untouched file costs a stat (the memo), a Hugging Face cache blob costs nothing (its name is its sha256)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack import _file_hashes
from embedstack.providers.hub import BUNDLED_FILES_STAMP, ModelSource, locate_model
from embedstack.providers.huggingface import HuggingFaceEmbedding

pytestmark = pytest.mark.slow  # tiny models saved and loaded

TEXTS = ["the cat sat on the mat", "a dog"]


def _rewrite_keeping_size_and_mtime(model_dir: Path) -> None:
    """New weights (same shapes, so the same file size) saved over the old ones, then the old mtime put back."""
    import transformers

    weights = model_dir / "model.safetensors"
    before = weights.stat()
    retrained = transformers.BertModel.from_pretrained(str(model_dir))
    for p in retrained.parameters():
        p.data.mul_(-1.5)
    retrained.save_pretrained(str(model_dir.with_name("retrained")))
    shutil.copyfile(model_dir.with_name("retrained") / "model.safetensors", weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # what touch -r / cp -p / rsync -t do
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.fixture
def hash_calls(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Records each file that is read and hashed (the cost the memo saves); the in-process memo starts empty."""
    calls: list[Path] = []
    real = _file_hashes.sha256_file

    def counting(path: Path) -> str:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(_file_hashes, "sha256_file", counting)
    monkeypatch.setattr(_file_hashes, "_in_process", {})
    return calls


def test_weights_rewritten_with_same_size_and_mtime_are_not_served_from_the_cache(tiny: Any, tmp_path: Path) -> None:
    from embedstack.kvstore.sqlite import SQLiteKVStore

    model_dir = tmp_path / "my-finetune"
    shutil.copytree(tiny.plain, model_dir)

    def model() -> HuggingFaceEmbedding:
        return HuggingFaceEmbedding(str(model_dir), backend="torch", embeddings_cache=SQLiteKVStore(tmp_path / "c.db"))

    first = model().embed(TEXTS)
    before = model().provider.identity()["files"]
    _rewrite_keeping_size_and_mtime(model_dir)
    fresh = model()
    assert fresh.provider.identity()["files"] != before
    again = fresh.embed(TEXTS)
    assert fresh._encoder is not None  # recomputed with the new weights, not served
    assert not np.allclose(again, first, atol=1e-3)
    np.testing.assert_allclose(again, HuggingFaceEmbedding(str(model_dir), backend="torch").embed(TEXTS), atol=1e-6)


def test_the_stamp_is_the_files_content_on_any_machine(tiny: Any, tmp_path: Path) -> None:
    """A copy with other mtimes, inodes and paths (another machine sharing a Redis cache) has the same stamp."""
    a, b = tmp_path / "a", tmp_path / "elsewhere" / "b"
    shutil.copytree(tiny.plain, a)
    shutil.copytree(tiny.plain, b, copy_function=shutil.copyfile)  # mtimes not preserved
    os.utime(b / "model.safetensors", ns=(1, 1))
    assert locate_model(str(a)).files_stamp() == locate_model(str(b)).files_stamp() is not None
    identity = HuggingFaceEmbedding(str(a), backend="torch").provider.identity()
    assert HuggingFaceEmbedding(str(b), backend="torch").provider.identity()["files"] == identity["files"]


def test_an_untouched_file_is_hashed_once_and_a_rewritten_one_again(
    tiny: Any, tmp_path: Path, hash_calls: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "model.safetensors"
    shutil.copyfile(tiny.plain / "model.safetensors", weights)
    memo = tmp_path / "memo"
    digest = _file_hashes.file_sha256(weights, memo)
    assert digest == hashlib.sha256(weights.read_bytes()).hexdigest() and len(hash_calls) == 1
    assert (memo / _file_hashes.MEMO_NAME).is_file()

    monkeypatch.setattr(_file_hashes, "_in_process", {})  # a new process: the memo file answers
    assert _file_hashes.file_sha256(weights, memo) == digest and len(hash_calls) == 1

    st = weights.stat()
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 1
    weights.write_bytes(bytes(blob))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: only the ctime tells
    changed = _file_hashes.file_sha256(weights, memo)
    assert changed == hashlib.sha256(bytes(blob)).hexdigest() != digest and len(hash_calls) == 2


def test_a_corrupt_or_unwritable_memo_only_costs_a_rehash(tiny: Any, tmp_path: Path, hash_calls: list[Path]) -> None:
    weights = tiny.plain / "model.safetensors"
    memo = tmp_path / "memo"
    memo.mkdir()
    (memo / _file_hashes.MEMO_NAME).write_text("{not json")
    want = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert _file_hashes.file_sha256(weights, memo) == want
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the memo folder would be")
    _file_hashes._in_process.clear()
    assert _file_hashes.file_sha256(weights, blocked) == want and len(hash_calls) == 2


def test_hugging_face_cache_blobs_are_named_by_their_sha256_and_never_read(
    tiny: Any, tmp_path: Path, hash_calls: list[Path]
) -> None:
    """A snapshot directory passed as a path: its LFS files link to blobs/<sha256>, used as is (no hashing), and
    the stamp is the one a plain copy of the same files has."""
    repo = tmp_path / "models--me--tiny"
    snapshot = repo / "snapshots" / ("1" * 40)
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for file in tiny.plain.iterdir():
        data = file.read_bytes()
        name = hashlib.sha256(data).hexdigest() if file.suffix == ".safetensors" else hashlib.sha1(data).hexdigest()
        (repo / "blobs" / name).write_bytes(data)
        (snapshot / file.name).symlink_to(Path("../../blobs") / name)
    plain_stamp = locate_model(str(tiny.plain)).files_stamp()
    hash_calls.clear()
    weights = snapshot / "model.safetensors"
    assert _file_hashes.file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert hash_calls == []
    assert ModelSource(snapshot, "path").files_stamp() == plain_stamp
    assert hash_calls and weights.resolve() not in hash_calls  # only the small non-LFS files were read


def test_the_bundled_model_keeps_its_keys_while_its_files_are_as_packaged(tmp_path: Path) -> None:
    """As packaged, the bundled model has no files stamp (its keys are those it always had); the constant is the
    stamp of those files, so a copy of them elsewhere, or any other version of them, is keyed by content."""
    bundled = locate_model("sentence-transformers/all-MiniLM-L6-v2")
    assert bundled.origin == "bundled" and bundled.files_stamp() is None
    assert "files" not in HuggingFaceEmbedding(backend="torch").provider.identity()
    copy = tmp_path / "minilm"
    shutil.copytree(bundled.path, copy)
    assert locate_model(str(copy)).files_stamp() == BUNDLED_FILES_STAMP
    (copy / "vocab.txt").write_text((copy / "vocab.txt").read_text() + "extra\n")
    assert ModelSource(copy, "bundled").files_stamp() not in (None, BUNDLED_FILES_STAMP)
