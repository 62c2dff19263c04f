"""Field types every request model and route shares, so one rule covers each kind of client-chosen value.

`PathId` is the one id pattern (`hd_core.client_values.ID_PATTERN`) for ids in a path; `PlainText`
and `MultilineText` refuse control and format characters (NUL, bidi overrides) in names, e-mails
and reasons. A refusal is a 422 `HD_ERR_VALIDATION`, like any other
field that breaks the schema. Each type's JSON schema states exactly what the domain accepts, so a
request built from the OpenAPI document is never refused for its shape.
"""

from __future__ import annotations

from typing import Annotated, Any

from aws_lambda_powertools.event_handler.openapi.params import Path
from pydantic import AfterValidator, Field

from hd_core.client_values import (
    CIDR_PATTERN,
    EXTERNAL_ID_PATTERN,
    ID_PATTERN,
    MAX_EMAIL_LENGTH,
    NON_BLANK_PATTERN,
    email_pattern,
    email_problem,
    plain_text_pattern,
    plain_text_problem,
)
from hd_core.errors import UnknownScope
from hd_core.models import ALL_SCOPES
from hd_core.permissions import SCOPE_BUNDLES, expand_scopes


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


def _non_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("the text must not be blank")
    return _single_line(value)


def _non_blank_multiline(value: str) -> str:
    if not value.strip():
        raise ValueError("the text must not be blank")
    return _multiline(value)


def _email(value: str) -> str:
    problem = email_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


def _scope(value: str) -> str:
    try:
        expand_scopes([value])
    except UnknownScope as error:
        raise ValueError(str(error)) from None
    return value


PathId = Annotated[str, Path(pattern=ID_PATTERN)]


def _document_single_line(schema: dict[str, Any]) -> None:
    schema["pattern"] = plain_text_pattern()


def _document_multiline(schema: dict[str, Any]) -> None:
    schema["pattern"] = plain_text_pattern(multiline=True)


def _non_blank_pattern(*, multiline: bool) -> str:
    hidden = plain_text_pattern(multiline=multiline)[3:-3]  # the excluded ranges of `^[^...]*$`
    blank = NON_BLANK_PATTERN[2:-1]  # the blanks `[^...]` excludes
    return rf"^[^{hidden}]*[^{blank}{hidden}][^{hidden}]*$"


def _document_non_blank(schema: dict[str, Any]) -> None:
    schema["pattern"] = _non_blank_pattern(multiline=False)


def _document_non_blank_multiline(schema: dict[str, Any]) -> None:
    schema["pattern"] = _non_blank_pattern(multiline=True)


def _document_email(schema: dict[str, Any]) -> None:
    schema["pattern"] = email_pattern()


# The validator enforces the rule; the pattern (built only when the OpenAPI document is) tells clients.
PlainText = Annotated[str, AfterValidator(_single_line), Field(json_schema_extra=_document_single_line)]
MultilineText = Annotated[str, AfterValidator(_multiline), Field(json_schema_extra=_document_multiline)]
# Plain text with at least one character that is not a blank (a name that shows as something).
NonBlankText = Annotated[str, AfterValidator(_non_blank), Field(json_schema_extra=_document_non_blank)]
# The same over several lines (a reason someone must give).
NonBlankMultilineText = Annotated[
    str, AfterValidator(_non_blank_multiline), Field(json_schema_extra=_document_non_blank_multiline)
]
EmailAddress = Annotated[
    str,
    AfterValidator(_email),
    Field(min_length=3, max_length=MAX_EMAIL_LENGTH, json_schema_extra=_document_email),
]
# `<issuer>#<subject>`: an OIDC issuer URL and subject are printable ASCII (OIDC Core 2, 5.7).
ExternalId = Annotated[str, Field(min_length=3, max_length=512, pattern=EXTERNAL_ID_PATTERN)]
# An IPv4 or IPv6 network or address (a lone address is a /32 or /128).
Cidr = Annotated[str, Field(max_length=64, pattern=CIDR_PATTERN)]
# A scope (`query:read`) or a bundle of them (`read_only`, `developer`, `admin`, `agent`).
ScopeName = Annotated[
    str,
    AfterValidator(_scope),
    Field(json_schema_extra={"enum": [*ALL_SCOPES, *sorted(SCOPE_BUNDLES)]}),
]
