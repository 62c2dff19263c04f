"""Redaction of free text, by pattern only (no SQL parser, so it ships to Lambda): PII and engine errors.

`scrub_pii` replaces e-mail addresses, SSNs, Luhn-valid card numbers and phone numbers with typed
markers; `redact_error_detail` / `redact_error_message` keep an engine error's class and the shape
of its first line, never the values it quotes. SQL statements are redacted in `hd_core.redaction`,
which uses these as its second pass. None of them ever raises.
"""

from __future__ import annotations

import re

PLACEHOLDER = "?"

# --- PII patterns ------------------------------------------------------------------------------
# Every repetition is bounded or made of disjoint pieces, so pathological input costs linear time
# (no catastrophic backtracking). Speed comes from cheap anchors: e-mails are found from their
# `@` (a literal sre scans for in C) and the digit patterns only run inside short "digit-ish" runs.

_EMAIL_DOMAIN_RE = re.compile(r"@[\w-]{1,63}(?:\.[\w-]{1,63}){0,8}\.[^\W\d_]{2,24}(?![\w-])")
# Matched on the reversed 64 characters before the `@`: the local part, read right to left.
_EMAIL_LOCAL_REVERSED_RE = re.compile(r"[\w.%+-]{1,64}")

# A digit-ish run long enough to hold any numeric PII below (7+ characters after the first).
_DIGIT_RUN_RE = re.compile(r"[\d(+][\d ().+-]{7,}")
_SSN = r"(?P<ssn>(?<!\d)\d{3}-\d{2}-\d{4}(?![\d-]))"
_NINE_DIGITS = r"(?P<nine>(?<!\d)\d{9}(?!\d))"
# NANP needs a separator, parentheses or a +1/1- prefix: ten bare digits are too often an id.
_PHONE_NANP = r"(?P<phone>(?<![\w+])(?:\+?1[ .-]?)?(?:\([2-9]\d{2}\)[ .-]?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}(?!\d))"
_PHONE_E164 = r"(?P<e164>(?<![\w)\]+])\+[1-9](?:[ -]?\d){7,14}(?![\d-]))"
# 13-19 digits with optional single space/dash separators; replaced only if the Luhn check passes.
_CARD = r"(?P<card>(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-]))"
# NANP before E.164: at a shared `+1` start the stricter shape wins and stops at the number's end.
_DIGIT_PII_RE = re.compile("|".join((_SSN, _PHONE_NANP, _PHONE_E164, _CARD, _NINE_DIGITS)))
# Nine bare digits are only an SSN when a field name right before says so, e.g. `ssn=123456789`.
_SSN_LABEL_RE = re.compile(r"(?i:(?<![a-z])(?:ssn|social[ _-]?security|soc[ _-]?sec)[a-z_]{0,12})[^\w\n]{0,20}\Z")
_SSN_LABEL_REACH = 48


def luhn_valid(digits: str) -> bool:
    """Whether a string of decimal digits passes the Luhn (mod 10) check used by payment cards."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _scrub_emails(text: str) -> str:
    pieces: list[str] = []
    last = 0
    for domain in _EMAIL_DOMAIN_RE.finditer(text):
        at = domain.start()
        local = _EMAIL_LOCAL_REVERSED_RE.match(text[max(last, at - 64) : at][::-1])
        if local is None:
            continue
        pieces += (text[last : at - local.end()], "[EMAIL]")
        last = domain.end()
    return "".join(pieces) + text[last:] if pieces else text


def _digit_marker(text: str, match: re.Match[str]) -> str | None:
    kind = match.lastgroup
    if kind == "card":
        return "[CARD]" if luhn_valid(match.group().replace(" ", "").replace("-", "")) else None
    if kind == "nine":
        start = match.start()
        labelled = _SSN_LABEL_RE.search(text, max(0, start - _SSN_LABEL_REACH), start)
        return "[SSN]" if labelled else None
    return "[SSN]" if kind == "ssn" else "[PHONE]"


def _scrub_digit_pii(text: str) -> str:
    pieces: list[str] = []
    last = 0
    for run in _DIGIT_RUN_RE.finditer(text):
        # Searching the whole string between pos/endpos keeps lookbehinds seeing the real context.
        for match in _DIGIT_PII_RE.finditer(text, run.start(), run.end()):
            marker = _digit_marker(text, match)
            if marker is not None:
                pieces += (text[last : match.start()], marker)
                last = match.end()
    return "".join(pieces) + text[last:] if pieces else text


def scrub_pii(text: str) -> str:
    """`text` with e-mail addresses, SSNs, Luhn-valid card numbers and phone numbers replaced by typed markers."""
    if "@" in text:
        text = _scrub_emails(text)
    return _scrub_digit_pii(text)


# --- engine error text -----------------------------------------------------------------------------
# DuckDB's messages quote the values they choke on ("Could not convert string 'alice@acme.com' to
# INT32", 'Duplicate key "id: 5"') and echo the statement ("LINE 1: SELECT ... 'secret'"). Audit
# records keep the error's class and the shape of its first line, never those values.

MAX_ERROR_DETAIL_CHARS = 500

# A quoted fragment: '...' or "..." (doubled quotes inside), or a dollar-quoted string; unterminated
# ones run to the end. An apostrophe between two letters (can't, O'Brien) neither opens nor closes a
# string, so prose after a quoted value survives and a value holding one is still taken out whole.
_QUOTED_RE = re.compile(
    r"""(?:(?<![A-Za-z])'|(?<=[A-Za-z])'(?![A-Za-z]))(?:[^']|''|(?<=[A-Za-z])'(?=[A-Za-z]))*(?:'|\Z)"""
    r"""|"(?:[^"]|"")*(?:"|\Z)"""
    r"""|\$(?P<tag>(?:[A-Za-z_]\w*)?)\$(?:.*?\$(?P=tag)\$|.*\Z)""",
    re.DOTALL,
)
# A number standing on its own (not the 32 of INT32 nor the 8 of UTF8).
_NUMBER_RE = re.compile(r"(?<![\w$.])[-+]?\.?\d(?:[eE][-+]?\d|[\w.])*")
# A double-quoted name as our own messages write it (relation "crm.customers"): kept in messages.
_QUOTED_NAME_RE = re.compile(r'"[A-Za-z_][\w$]*(?:\.[A-Za-z_][\w$]*)*"')


def _first_line(text: str) -> str:
    """The first non-empty line: what follows (LINE n: excerpts, carets, candidates) echoes the statement."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _cap(text: str) -> str:
    return text if len(text) <= MAX_ERROR_DETAIL_CHARS else text[: MAX_ERROR_DETAIL_CHARS - 3] + "..."


def redact_error_detail(text: str) -> str:
    """An engine error as audit records keep it: first line only, quoted fragments and numbers as `?`.

    `ConversionException: Conversion Error: Could not convert string 'zz-77' to INT32` becomes
    `ConversionException: Conversion Error: Could not convert string ? to INT32`. PII-scrubbed,
    capped at `MAX_ERROR_DETAIL_CHARS`; idempotent, so records redacted once may be redacted again.
    Never raises.
    """
    try:
        line = _QUOTED_RE.sub(PLACEHOLDER, _first_line(text))
        return _cap(scrub_pii(_NUMBER_RE.sub(PLACEHOLDER, line)))
    except Exception:  # noqa: BLE001 - never raise on the audit path; keep nothing rather than too much
        return PLACEHOLDER


def _redact_quoted_in_message(match: re.Match[str]) -> str:
    fragment = match.group()
    return fragment if _QUOTED_NAME_RE.fullmatch(fragment) else PLACEHOLDER


def redact_error_message(text: str) -> str:
    """An error message or verdict reason as audit records keep it: first line, quoted values as `?`.

    Unlike `redact_error_detail`, numbers stay (our messages state limits and counts) and so do
    double-quoted names (`relation "crm.customers" does not exist`); single-quoted fragments and
    any other double-quoted text go, since engine messages quote literals that way. PII-scrubbed,
    capped, idempotent. Never raises.
    """
    try:
        return _cap(scrub_pii(_QUOTED_RE.sub(_redact_quoted_in_message, _first_line(text))))
    except Exception:  # noqa: BLE001 - never raise on the audit path; keep nothing rather than too much
        return PLACEHOLDER
