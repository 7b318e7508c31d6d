"""Building blocks of the pipeline-file models, shared by the stage specs in ``tasks/``.

Kept apart from :mod:`slipway.spec` so stage families can define their own spec
models without an import cycle (``slipway.spec`` imports them to build ``Stage``).
"""

from __future__ import annotations

import posixpath
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"

Name = Annotated[str, Field(pattern=NAME_PATTERN)]


def _as_list(value: Any) -> Any:
    """Accept a single string where a list of strings is expected."""
    return [value] if isinstance(value, str) else value


def _check_relative_path(value: str) -> str:
    """Refuse paths that could leave the workspace, before anything runs."""
    if not isinstance(value, str):
        return value
    if value.startswith(("/", "\\")) or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"path {value!r} must be relative to the workspace")
    if ".." in posixpath.normpath(value).split("/"):
        raise ValueError(f"path {value!r} leaves the workspace")
    return value


def _relative_paths(value: Any) -> Any:
    value = _as_list(value)
    if isinstance(value, list):
        for item in value:
            _check_relative_path(item)
    return value


StrList = Annotated[list[str], BeforeValidator(_as_list)]
RelPath = Annotated[str, BeforeValidator(_check_relative_path)]
RelGlobs = Annotated[list[str], BeforeValidator(_relative_paths)]
EnvMap = dict[Annotated[str, Field(pattern=ENV_NAME_PATTERN)], str]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)
