"""The one base class of every config object (app, pools, models, routing, fake engine).

Configs come from YAML written by hand, and they are validated in the process that runs
`serve run`, before any replica starts. So they are strict: a misspelt key, or a value
of the wrong type (`"300"` for a number, `1` for a string, `"true"` for a bool), fails
there, with a message naming the field, instead of being silently ignored or coerced and
surfacing a minute later inside an engine replica. Frozen, because a config is shared by
every component built from it and never changes after validation.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictConfig(BaseModel):
    """Base of every config object: unknown keys are errors, values are never coerced.

    Strict mode still accepts what YAML yields for the declared types: an int for a
    float field, a list for a list, a mapping for a nested config. A field whose type
    YAML cannot produce as such (a tuple, an enum) must opt out with
    `Field(strict=False)` and say why.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
