"""Building blocks of every config section: strict models and the value types that may reach a script."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


SafeText = Annotated[str, Field(pattern=r"^[^\n\r\x00]*$")]  # one line: it may reach a job script (quoted)
Directive = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.,:=/@%+-]+( [A-Za-z0-9_.,:=/@%+-]+)?$")]  # scheduler-parsed
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]  # a file-system-safe name
