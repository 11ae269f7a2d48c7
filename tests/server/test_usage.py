"""`usage` is the model's own token count (instructions and special tokens included, after truncation), for
inputs the model computes and for cache hits alike (in-process app, the tiny BERT)."""

from __future__ import annotations

from pathlib import Path

from embedstack.kvstore.simple import SimpleKVStore
from embedstack.providers.huggingface import HuggingFaceEmbedding
from embedstack.server import create_app

from .conftest import serving


def tokens(model: HuggingFaceEmbedding, texts: list[str], prefix: str = "") -> int:
    """What the model's tokenizer makes of the texts (a fresh instance of it, not the server's)."""
    tokenizer = model._make_tokenizer()
    assert tokenizer is not None
    return sum(len(t.ids) for t in tokenizer.tokenize([prefix + t for t in texts]))


async def test_usage_is_the_models_token_count_computed_or_cached(tiny_prompts_dir: Path) -> None:
    model = HuggingFaceEmbedding(str(tiny_prompts_dir), backend="torch")
    model.embeddings_cache = SimpleKVStore()
    long_text = " ".join(["quick brown fox"] * 40)  # over the tiny model's 16 tokens: counted truncated
    batch = ["a man is eating food", "cat", long_text, "cat", "the red house by the river"]
    app = create_app({"tiny": model})
    async with serving(app) as c:

        async def usage(inputs: str | list[str], input_type: str = "document") -> int:
            r = await c.post("/v1/embeddings", json={"input": inputs, "model": "tiny", "input_type": input_type})
            assert r.status_code == 200, r.text
            u = r.json()["usage"]
            assert u["prompt_tokens"] == u["total_tokens"]
            return int(u["prompt_tokens"])

        doc, query = "blue house ", "red car "  # the directory's prompts (conftest)
        assert await usage("a dog sat on the mat") == tokens(model, ["a dog sat on the mat"], doc)  # one, computed
        assert await usage(batch) == tokens(model, batch, doc)  # several, a repeat and a truncated one
        assert await usage(batch) == tokens(model, batch, doc)  # the same again: every input a cache hit
        assert await usage(["cat", "a new text"]) == tokens(model, ["cat", "a new text"], doc)  # hit and miss
        assert await usage("cat", "query") == tokens(model, ["cat"], query)  # the query instruction counts
        assert tokens(model, ["cat"], query) != tokens(model, ["cat"])
        metrics = (await c.get("/metrics")).text
    assert 'embedstack_cache_hits_total{model="tiny"} 6.0' in metrics
