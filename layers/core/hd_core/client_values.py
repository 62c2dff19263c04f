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

# An e-mail address, deliberately plain (something@host): deliverability is proven by the invitation itself.
MAX_EMAIL_LENGTH = 254
_HOST_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_EMAIL = re.compile(rf"[^@\s]{{1,64}}@{_HOST_LABEL}(?:\.{_HOST_LABEL})*")

# At least one character `str.strip` keeps: the whitespace of Python's `str.isspace`, spelled out so
# that ECMA-262 (whose `\s` differs) reads the same set.
NON_BLANK_PATTERN = "[^\\t-\\r \\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"

# `<issuer>#<subject>` of an OIDC identity: an issuer URL and a subject are printable ASCII (OIDC
# Core 5.7), the issuer holds no `#`.
EXTERNAL_ID_PATTERN = r"^[!-\"$-~]+#[!-~]+$"

# An IPv4 or IPv6 network or lone address, as `ipaddress.ip_network(strict=False)` reads it: no
# leading zeros, no zone ids, no IPv4-in-IPv6 tails. ASCII classes only, so ECMA-262 and Python agree.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_H = r"[0-9A-Fa-f]{1,4}"
_IPV6 = (
    rf"(?:(?:{_H}:){{7}}{_H}|(?:{_H}:){{1,7}}:|(?:{_H}:){{1,6}}:{_H}|(?:{_H}:){{1,5}}(?::{_H}){{1,2}}"
    rf"|(?:{_H}:){{1,4}}(?::{_H}){{1,3}}|(?:{_H}:){{1,3}}(?::{_H}){{1,4}}|(?:{_H}:){{1,2}}(?::{_H}){{1,5}}"
    rf"|{_H}:(?::{_H}){{1,6}}|:(?:(?::{_H}){{1,7}}|:))"
)
CIDR_PATTERN = (
    rf"^(?:{_IPV4}(?:/(?:3[0-2]|[12]?[0-9]))?|{_IPV6}(?:/(?:12[0-8]|1[01][0-9]|[1-9]?[0-9]))?)$"
)

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


@functools.cache
def email_pattern() -> str:
    """The e-mail shape for the API document: `_EMAIL` without hidden characters (see `plain_text_pattern`)."""
    hidden = plain_text_pattern()[3:-3]  # the excluded ranges of `^[^...]*$`
    return rf"^[^@\s{hidden}]{{1,64}}@{_HOST_LABEL}(?:\.{_HOST_LABEL})*$"


def email_problem(email: str) -> str | None:
    """Why `email` (surrounding blanks ignored) is not an e-mail address a user may have, or None when it is."""
    cleaned = email.strip()
    if len(cleaned) > MAX_EMAIL_LENGTH or not _EMAIL.fullmatch(cleaned):
        return f"{email!r} is not an email address (name@example.com)"
    return plain_text_problem(cleaned, "an email address")


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
