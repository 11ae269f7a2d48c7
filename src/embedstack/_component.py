"""BaseComponent: LlamaIndex's serialisation contract (class_name, to_dict, to_json, from_dict)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr
from typing_extensions import Self

__all__ = ["BaseComponent"]


def _secret_fields(model: type[BaseModel]) -> set[str]:
    """Names of fields typed SecretStr (or Optional[SecretStr]), never serialised."""
    names = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if ann is SecretStr or SecretStr in args:
            names.add(name)
    return names


class BaseComponent(BaseModel):
    """A pydantic model with LlamaIndex's to_dict/from_dict round trip; secrets never serialised."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=("pydantic_model_",))

    @classmethod
    def class_name(cls) -> str:
        """Stable name stored in to_dict() and used by from_dict()."""
        return cls.__name__

    def to_dict(self, **kwargs: Any) -> dict[str, Any]:
        """The public fields as plain data plus class_name; SecretStr fields are left out."""
        exclude = set(kwargs.pop("exclude", None) or ()) | _secret_fields(type(self))
        data = self.model_dump(exclude=exclude, **kwargs)
        data["class_name"] = self.class_name()
        return data

    def to_json(self, **kwargs: Any) -> str:
        """to_dict() as JSON."""
        return json.dumps(self.to_dict(**kwargs), default=str)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **kwargs: Any) -> Self:
        """Rebuild from to_dict() output; extra kwargs override."""
        data = dict(data)
        data.pop("class_name", None)
        data.update(kwargs)
        return cls(**data)

    @classmethod
    def from_json(cls, data_str: str, **kwargs: Any) -> Self:
        """Rebuild from to_json() output."""
        return cls.from_dict(json.loads(data_str), **kwargs)
