"""Field types every request model and route shares, so one rule covers each kind of client-chosen value.

`PathId` is the one id pattern (`hd_core.client_values.ID_PATTERN`) for ids in a path; `PlainText`
and `MultilineText` refuse control and format characters (NUL, bidi overrides) in names, e-mails
and reasons. A refusal is a 422 `HD_ERR_VALIDATION`, like any other field that breaks the schema.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import AfterValidator, Field

from hd_core.client_values import ID_PATTERN, plain_text_pattern, plain_text_problem


def _single_line(value: str) -> str:
    problem = plain_text_problem(value, "the text")
    if problem is not None:
        raise ValueError(problem)
    return value


def _multiline(value: str) -> str:
    problem = plain_text_problem(value, "the text", multiline=True)
    if problem is not None:
        raise ValueError(problem)
    return value


PathId = Annotated[str, Path(pattern=ID_PATTERN)]
def _document_single_line(schema: dict[str, Any]) -> None:
    schema["pattern"] = plain_text_pattern()


def _document_multiline(schema: dict[str, Any]) -> None:
    schema["pattern"] = plain_text_pattern(multiline=True)


# The validator enforces the rule; the pattern (built only when the OpenAPI document is) tells clients.
PlainText = Annotated[str, AfterValidator(_single_line), Field(json_schema_extra=_document_single_line)]
MultilineText = Annotated[str, AfterValidator(_multiline), Field(json_schema_extra=_document_multiline)]
