"""Shared fixtures: event recorders that detach after each test, so global handlers never leak; private cache
and hub folders; the tiny random BERT; `embedstack` in a subprocess (`cli`) and the bundled sample corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from embedstack.instrumentation import BaseEvent, BaseEventHandler, get_dispatcher
from embedstack.instrumentation.handlers import SimpleSpanHandler

#: Fixtures that make a test slow (a model built or loaded, a CLI subprocess, Ray, Redis, a browser): a test that
#: uses one, directly or through another fixture, is marked `slow`. Modules that are slow throughout say
#: `pytestmark = pytest.mark.slow`; `pytest -m "not slow"` runs the rest, the unit tier.
SLOW_FIXTURES = frozenset(
    {
        "cli",  # `embedstack` in a subprocess
        "tiny_bert_checkpoint",  # the tiny random BERT (and every local model built from it)
        "tiny_clip_path",  # the tiny random CLIP
        "build_clip",  # builds more of them
        "local_model",  # the bundled all-MiniLM-L6-v2, loaded
        "minilm",
        "bundled_model",
        "ray_session",
        "redis_server",
        "browser",  # headless chromium
    }
)


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


class RecordingEventHandler(BaseEventHandler):
    """Keeps every event it sees."""

    events: list[Any] = []

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)

    def of(self, name: str) -> list[Any]:
        return [e for e in self.events if e.class_name() == name]


@pytest.fixture
def event_recorder() -> Iterator[RecordingEventHandler]:
    root = get_dispatcher()
    handler = RecordingEventHandler(events=[])
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


@pytest.fixture
def span_recorder() -> Iterator[SimpleSpanHandler]:
    root = get_dispatcher()
    handler = SimpleSpanHandler()
    root.add_span_handler(handler)
    yield handler
    root.span_handlers.remove(handler)


@pytest.fixture(scope="session", autouse=True)
def hf_hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test (and the CLI processes tests start) sees an empty Hugging Face home, never this machine's:
    HF_HOME, HF_HUB_CACHE and huggingface_hub's constants (read at its import). Yields the hub folder."""
    home = tmp_path_factory.mktemp("hf-home-session")
    hub = home / "hub"
    hub.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HOME", str(home))
        mp.setenv("HF_HUB_CACHE", str(hub))
        try:
            from huggingface_hub import constants
        except ImportError:
            pass
        else:
            mp.setattr(constants, "HF_HOME", str(home))
            mp.setattr(constants, "HF_HUB_CACHE", str(hub))
        yield hub


@pytest.fixture(scope="session", autouse=True)
def private_cache_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """embedstack's own caches (ONNX graphs, the CLI's vector cache) in a session folder, never the user's:
    a run never depends on what an earlier run left, and two runs at once never share files."""
    root = tmp_path_factory.mktemp("cache-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EMBEDSTACK_CACHE_DIR", str(root / "embedstack"))
        mp.setenv("XDG_CACHE_HOME", str(root))
        yield root


#: The vocabulary of the tiny random BERT below (tests embed texts made of these words).
TINY_WORDS = (
    "the a an man woman is are eating food bread piece of cat dog sat on mat quick brown fox jumps "
    "over lazy red blue green house car tree river city music book".split()
)


@pytest.fixture(scope="session")
def save_tiny_bert() -> Callable[..., Path]:
    """(folder, vocab, seed, head="BertModel", tokenizer={...}, **config) → `folder` holding a tiny random BERT (32
    hidden, 2 layers, 2 heads, 64 positions; `config` overrides) under `head`, with a WordPiece tokenizer over `vocab`
    (64 tokens; `tokenizer` overrides), saved as transformers saves them."""

    def save(
        folder: Path,
        vocab: list[str],
        seed: int,
        head: str = "BertModel",
        tokenizer: dict[str, Any] | None = None,
        **config: Any,
    ) -> Path:
        import torch
        import transformers

        ids = {w: i for i, w in enumerate(vocab)}
        transformers.BertTokenizer(vocab=ids, **{"model_max_length": 64, **(tokenizer or {})}).save_pretrained(folder)
        torch.manual_seed(seed)
        settings = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
        settings |= {"max_position_embeddings": 64, **config}
        model = getattr(transformers, head)(transformers.BertConfig(vocab_size=len(vocab), **settings))
        model.eval().save_pretrained(folder)
        return folder

    return save


@pytest.fixture(scope="session")
def tiny_bert_checkpoint(tmp_path_factory: pytest.TempPathFactory, save_tiny_bert: Callable[..., Path]) -> Path:
    """A tiny random BERT (32 hidden, 2 layers, 64 positions, seed 0) saved once per session as a plain
    transformers checkpoint with its tokenizer: the base of every tiny local model the tests build. Read-only."""
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, "##s", "##ing"]
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "plain", vocab, 0)


# ---- the command line in a subprocess, and the bundled sample corpus ----

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "examples" / "packages.jsonl"

Run = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: offline, and any default cache inside the temp dir."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        PYTHONWARNINGS="default",
        COLUMNS="200",
    )
    env.update(extra)
    return env


@pytest.fixture
def cli(tmp_path: Path) -> Run:
    """Run `python -m embedstack.cli ARGS` in tmp_path; returns the CompletedProcess (text mode)."""

    def run(
        *args: str,
        input: str | bytes | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "embedstack.cli", *args],
            cwd=tmp_path,
            input=input.encode() if isinstance(input, str) else input,
            capture_output=True,
            env=env or cli_env(tmp_path),
            timeout=timeout,
        )
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    return run


@pytest.fixture
def sample_rows() -> list[dict[str, str]]:
    """The first 60 records of the bundled sample corpus."""
    with open(SAMPLE, encoding="utf-8") as f:
        return [json.loads(line) for line in f][:60]


@pytest.fixture
def sample_jsonl(tmp_path: Path, sample_rows: list[dict[str, str]]) -> Path:
    """Those records as docs.jsonl in the temp dir."""
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sample_rows), encoding="utf-8")
    return path
