"""The smallest JSON value a JSON schema accepts, for the fake engine's tool calls and
structured outputs: what a model constrained by vLLM's guided decoding could answer.

Only the parts of JSON Schema that tool and response schemas use are understood:
`type` (one or a list), `properties`/`required`, `items`/`minItems`, `enum`, `const`,
`anyOf`/`oneOf`/`allOf`, local `$ref`s (`#/$defs/...`, as pydantic writes them),
string `minLength`/`maxLength`/`format`, numeric bounds. Anything else becomes null.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "x@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-0000-0000-000000000000",
}


def minimal_instance(schema: Any, root: Mapping[str, Any] | None = None) -> Any:
    """A small value valid against `schema` (`root` resolves `$ref`s; default: itself)."""
    if not isinstance(schema, Mapping):  # `true`, `{}`-like or broken: anything goes
        return None
    root = schema if root is None else root
    if "$ref" in schema:
        return minimal_instance(_resolve(schema["$ref"], root), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], root)
    if schema.get("allOf"):
        rest = {key: value for key, value in schema.items() if key != "allOf"}
        return minimal_instance(_merged([*schema["allOf"], rest], root), root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else None
    if kind == "object":
        properties = schema.get("properties", {})
        names = schema.get("required", list(properties))
        return {name: minimal_instance(properties.get(name, {}), root) for name in names}
    if kind == "array":
        count = schema.get("minItems", 0)
        return [minimal_instance(schema.get("items", {}), root) for _ in range(count)]
    if kind == "string":
        if schema.get("format") in _FORMATS:
            return _FORMATS[schema["format"]]
        return "x" * min(max(schema.get("minLength", 1), 1), schema.get("maxLength", 1 << 30))
    if kind in ("integer", "number"):
        return _number(schema)
    if kind == "boolean":
        return True
    return None


def _number(schema: Mapping[str, Any]) -> int | float:
    value: int | float = 1
    if "minimum" in schema:
        value = max(value, schema["minimum"])
    if "exclusiveMinimum" in schema:
        value = max(value, math.floor(schema["exclusiveMinimum"]) + 1)
    if "maximum" in schema:
        value = min(value, schema["maximum"])
    if "exclusiveMaximum" in schema:
        value = min(value, math.ceil(schema["exclusiveMaximum"]) - 1)
    if schema.get("type") == "integer":
        value = math.ceil(value)
    return value


def _merged(parts: list[Any], root: Mapping[str, Any]) -> dict[str, Any]:
    """One schema requiring what all `parts` require (`allOf` of object schemas)."""
    merged: dict[str, Any] = {}
    for part in parts:
        part = _resolve(part["$ref"], root) if "$ref" in part else part
        properties = {**merged.get("properties", {}), **part.get("properties", {})}
        required = [*merged.get("required", []), *part.get("required", [])]
        merged |= part
        merged["properties"] = properties
        if required:
            merged["required"] = required
    if not merged["properties"]:
        del merged["properties"]
    return merged


def _resolve(ref: str, root: Mapping[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/") if ref != "#" else []:
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
