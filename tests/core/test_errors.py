"""Every exception class embedstack defines derives from EmbedstackError and keeps its builtin base."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pickle
import pkgutil
from types import ModuleType

import pytest

import embedstack
from embedstack.errors import BadVectorsError, EmbeddingAPIError, EmbedstackError, InvalidInputError

# The builtin each class derived from before the hierarchy, so `except ValueError` etc. keep working.
FORMER_BUILTIN: dict[str, type[BaseException]] = {
    "InvalidInputError": ValueError,
    "BadVectorsError": ValueError,
    "UnsupportedModule": ValueError,
    "ModelMismatchError": ValueError,
    "OutputError": ValueError,
    "InputError": ValueError,
    "TooLongError": ValueError,
    "EmbeddingAPIError": RuntimeError,
    "ModelNotFoundError": FileNotFoundError,
    "ExportError": RuntimeError,
    "NotFittedError": RuntimeError,
    "SpladeModelError": ValueError,
    "ImageDecodeError": ValueError,
    # added since the hierarchy: the builtin each one also is
    "RedisCacheError": ConnectionError,
    "QueueFull": RuntimeError,
    "APIError": RuntimeError,
}


def _modules() -> list[ModuleType]:
    found = [embedstack]
    for info in pkgutil.walk_packages(embedstack.__path__, prefix="embedstack."):
        try:
            found.append(importlib.import_module(info.name))
        except Exception:  # optional dependency missing (onnx, torch, ...): nothing to check there
            continue
    return found


def _exception_classes() -> dict[str, type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for module in _modules():
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.startswith("embedstack")
                and obj.__module__ == module.__name__
                and not name.startswith("_")  # private control-flow signals never leave embedstack
            ):
                classes[f"{module.__name__}.{name}"] = obj
    return classes


CLASSES = _exception_classes()


def test_the_walk_finds_the_known_errors() -> None:
    names = {qual.rsplit(".", 1)[1] for qual in CLASSES}
    # These live in modules without optional dependencies, so the walk must always see them.
    for name in ("EmbeddingAPIError", "ImageDecodeError", "InputError", "OutputError", "BadVectorsError"):
        assert name in names


@pytest.mark.parametrize("qualname", sorted(CLASSES))
def test_every_error_derives_from_embedstack_error(qualname: str) -> None:
    cls = CLASSES[qualname]
    assert issubclass(cls, EmbedstackError)


@pytest.mark.parametrize("qualname", sorted(CLASSES))
def test_every_error_keeps_its_former_builtin(qualname: str) -> None:
    cls = CLASSES[qualname]
    name = qualname.rsplit(".", 1)[1]
    if name == "EmbedstackError":
        return
    assert name in FORMER_BUILTIN, f"{qualname}: new exception class; record its builtin base in FORMER_BUILTIN"
    assert issubclass(cls, FORMER_BUILTIN[name])
    # And some builtin other than Exception is still in its MRO, right after the embedstack ones.
    assert any(getattr(builtins, b.__name__, None) is b and b is not Exception for b in cls.__mro__[1:-2])


def test_public_import_paths_still_work() -> None:
    from embedstack.jobs._readers import InputError
    from embedstack.providers._image_decode import ImageDecodeError
    from embedstack.providers.openai import EmbeddingAPIError as from_provider
    from embedstack.providers.remote.retry import EmbeddingAPIError as from_retry

    assert embedstack.EmbeddingAPIError is EmbeddingAPIError is from_provider is from_retry
    for cls in (InputError, ImageDecodeError, EmbeddingAPIError, InvalidInputError, BadVectorsError):
        assert issubclass(cls, EmbedstackError)


def test_except_builtin_still_catches() -> None:
    from embedstack.jobs._readers import InputError

    with pytest.raises(ValueError):
        raise InputError("bad line")
    with pytest.raises(EmbedstackError):
        raise InputError("bad line")


def test_embedding_api_error_pickles() -> None:
    from embedstack.providers.remote.retry import Failure

    failure = Failure("status", "service unavailable", True, status=503)
    err = EmbeddingAPIError("openai", failure, attempts=3, items=["a", "b"], endpoint="https://x/v1")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, EmbeddingAPIError)
    assert isinstance(back, EmbedstackError)
    assert isinstance(back, RuntimeError)
    assert str(back) == str(err)
    assert back.status_code == err.status_code
    assert back.attempts == 3
