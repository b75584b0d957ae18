"""The base of every TrainingRun model: camelCase JSON names, snake_case attributes.

JSON crosses this boundary twice per reconcile: :meth:`pydantic.BaseModel.model_validate`
when the operator observes a run, and :func:`to_json` when it writes one.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class ApiModel(BaseModel):
    """camelCase aliases; unknown fields ignored (the apiserver prunes them anyway)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
        use_enum_values=False,
    )


def to_json(model: BaseModel) -> dict[str, Any]:
    """The JSON object of ``model`` as the apiserver stores it (unset fields omitted)."""
    out: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def no_schema_default(schema: dict[str, Any]) -> None:
    """``json_schema_extra`` for a field whose Python default is only a reading aid (a
    missing value reads as it) and must not appear as a CRD default."""
    schema.pop("default", None)
