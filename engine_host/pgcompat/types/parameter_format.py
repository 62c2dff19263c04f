"""What makes a Bind parameter malformed: the error and the checks every family's decoder shares."""

from __future__ import annotations


class ParameterFormatError(ValueError):
    """A Bind parameter is not a valid value of its declared type (SQLSTATE 22P02)."""


def _utf8(data: bytes, what: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParameterFormatError(f"invalid byte sequence for encoding \"UTF8\" in {what} value") from None
    if "\x00" in text:
        raise ParameterFormatError(f"invalid byte sequence for encoding \"UTF8\": 0x00 in {what} value")
    return text


def _bad(type_name: str, data: bytes | str) -> ParameterFormatError:
    shown = data if isinstance(data, str) else data.decode("utf-8", "replace")
    if len(shown) > 64:
        shown = shown[:61] + "..."
    return ParameterFormatError(f'invalid input syntax for type {type_name}: "{shown}"')


def _binary_length(data: bytes, size: int, type_name: str) -> None:
    if len(data) != size:
        raise ParameterFormatError(f"incorrect binary data format for type {type_name}: "
                                   f"expected {size} bytes, got {len(data)}")
