"""What a client may put in the ids and the human-readable text it chooses.

One id pattern covers every client-supplied id (policy ids, path parameters): an id holding `/`
cannot be addressed in a URL path, a NUL or `#` breaks store keys and logs, so such ids are
refused when written instead of being stored and then unreachable. The pattern allows only URL
"unreserved" characters, so an id is written in a path exactly as it is, never percent-encoded.

Names, e-mails, departments and reasons are shown to people (consoles, audit views, invitations):
control and format characters in them (NUL, bidi overrides such as U+202E, zero-width characters)
make one string display as another, so they are refused wherever such text enters.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from hd_core.errors import InvalidRequest

# Letters and digits first, then also `_ . -`; 128 characters at most. Generated ids
# (`new_id`: prefix, `_`, base62) always match.
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_ID = re.compile(ID_PATTERN)

# Cc: C0/C1 controls (NUL, ESC, newline...); Cf: format characters (bidi embeddings, overrides and
# isolates, LRM/RLM, zero-width joiners, BOM); Cs: lone surrogates, which cannot even be encoded as
# UTF-8; Zl/Zp: the Unicode line and paragraph separators.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Free text of several lines (a reason) may hold line breaks and tabs, nothing else hidden.
_MULTILINE_ALLOWED = frozenset("\n\t")


@functools.cache
def plain_text_pattern(*, multiline: bool = False) -> str:
    """A regular expression for the API document: the hidden characters of the Basic Multilingual Plane, refused.

    It is written so both ECMA-262 and Python read it (`\\uXXXX` escapes only), which leaves out
    what neither can express alike: lone surrogates and the few hidden characters above U+FFFF (tag
    characters, musical formatting). `plain_text_problem` refuses those too; it is the rule, this
    pattern tells clients and fuzzers most of it.
    """
    ranges: list[list[int]] = []
    for point in range(0x10000):
        ch = chr(point)
        category = unicodedata.category(ch)
        if category in _HIDDEN_CATEGORIES and category != "Cs" and not (multiline and ch in _MULTILINE_ALLOWED):
            if ranges and ranges[-1][1] == point - 1:
                ranges[-1][1] = point
            else:
                ranges.append([point, point])
    excluded = "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)
    return f"^[^{excluded}]*$"


def is_client_id(value: object) -> bool:
    """Whether `value` is a string an id may be: `ID_PATTERN`."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def hidden_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control or format character of `text` (line breaks and tabs allowed if `multiline`), or None."""
    for ch in text:
        if unicodedata.category(ch) in _HIDDEN_CATEGORIES and not (multiline and ch in _MULTILINE_ALLOWED):
            return ch
    return None


def plain_text_problem(text: str, what: str, *, multiline: bool = False) -> str | None:
    """Why `text` cannot be `what` (it holds a hidden character), or None when it can."""
    found = hidden_character(text, multiline=multiline)
    if found is None:
        return None
    return f"{what} must not contain control or formatting characters (found U+{ord(found):04X})"


def check_plain_text(text: str, what: str, *, multiline: bool = False) -> str:
    """`text` unchanged; raises `InvalidRequest` if it holds a control or format character."""
    problem = plain_text_problem(text, what, multiline=multiline)
    if problem is not None:
        raise InvalidRequest(problem)
    return text
