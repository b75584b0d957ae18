"""The base of every TrainingRun model: camelCase JSON names, snake_case attributes.

JSON crosses this boundary twice per reconcile: :meth:`pydantic.BaseModel.model_validate`
when the operator observes a run, and :func:`to_json` when it writes one.

The models are also the CRD's single source (``python -m spotrun_dev.crdgen``): what only
the CRD needs (formats, CEL rules, ``x-kubernetes-*`` markers) rides on their JSON schema
through :class:`Format`, :func:`cel` and :func:`crd_extra`, and changes no validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema


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


@dataclass(frozen=True)
class Format:
    """The OpenAPI ``format`` a field has in the CRD (int32, int64, date-time)."""

    name: str

    def __get_pydantic_json_schema__(
        self, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        schema["format"] = self.name
        return schema


Int32 = Annotated[int, Format("int32")]
Int64 = Annotated[int, Format("int64")]
Time = Annotated[str, Format("date-time")]  # RFC 3339, as the apiserver stores it


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One ``x-kubernetes-validations`` entry: a CEL rule the apiserver evaluates."""
    out = {"rule": rule, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    if reason is not None:
        out["reason"] = reason
    return out


def crd_extra(*rules: dict[str, str], **markers: Any) -> dict[str, Any]:
    """``json_schema_extra`` of a field or model: its CEL rules plus ``x-kubernetes-*``
    markers, given as ``list_type="map"`` for ``x-kubernetes-list-type: map``."""
    out: dict[str, Any] = {f"x-kubernetes-{_kebab(k)}": v for k, v in markers.items()}
    if rules:
        out["x-kubernetes-validations"] = list(rules)
    return out


def _kebab(name: str) -> str:
    return name.replace("_", "-")
