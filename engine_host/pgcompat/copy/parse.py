"""COPY statement syntax, as PostgreSQL 15 accepts it from psql, drivers and people.

Both option forms are read: `WITH (FORMAT csv, HEADER, DELIMITER ',', ...)` and the older
`[WITH] [BINARY] [DELIMITER [AS] 'x'] [NULL [AS] 'x'] [CSV [HEADER] [QUOTE ...] [ESCAPE ...]
[FORCE QUOTE ...|FORCE NOT NULL ...]]` that psql's `\\copy` and drivers send. Only STDIN and
STDOUT are served: a server file or PROGRAM is refused. Anything else this parser does not
recognise is refused too; nothing of a COPY is ever handed to DuckDB as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

FORMATS = ("text", "csv", "binary")
STAR = "*"


class CopyRefused(Exception):
    """A COPY that may not or cannot run: SQLSTATE, HD_ERR_* code, message and hint."""

    def __init__(self, sqlstate: str, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.sqlstate = sqlstate
        self.code = code
        self.message = message
        self.hint = hint


def _syntax(message: str) -> CopyRefused:
    return CopyRefused("42601", "HD_ERR_COPY_SYNTAX", message)


@dataclass(frozen=True)
class CopyOptions:
    """The format options of one COPY, with PostgreSQL's defaults filled in."""

    format: str = "text"
    header: bool = False
    header_match: bool = False
    delimiter: str = "\t"
    null: str = "\\N"
    quote: str = '"'
    escape: str = '"'
    force_quote: tuple[str, ...] | str = ()
    force_not_null: tuple[str, ...] = ()
    force_null: tuple[str, ...] = ()

    @property
    def binary(self) -> bool:
        return self.format == "binary"

    @property
    def csv(self) -> bool:
        return self.format == "csv"


@dataclass(frozen=True)
class CopyStatement:
    """`COPY table [(cols)] TO STDOUT | FROM STDIN` or `COPY (query) TO STDOUT`."""

    direction: str  # "to" or "from"
    schema: str | None = None
    table: str | None = None
    columns: tuple[str, ...] = ()
    query: str | None = None
    options: CopyOptions = field(default_factory=CopyOptions)

    @property
    def copies_out(self) -> bool:
        return self.direction == "to"


# --- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<space>\s+|--[^\n]*|/\*.*?\*/)
  | (?P<estring>[Ee]'(?:[^'\\]|\\.|'')*')
  | (?P<string>'(?:[^']|'')*')
  | (?P<qident>"(?:[^"]|"")+")
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<number>[-+]?\d+(?:\.\d+)?)
  | (?P<punct>[(),;.*=])
  | (?P<other>.)
""", re.VERBOSE | re.DOTALL)


@dataclass(frozen=True)
class _Token:
    kind: str  # word, ident (quoted), string, number, punct
    text: str  # the value: a word upper-cased with its original in `raw`, an unquoted string
    raw: str
    start: int
    end: int


_ESCAPES = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unescape_e_string(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        if s in _ESCAPES:
            return _ESCAPES[s]
        if s[0] in "01234567":
            return chr(int(s, 8))
        if s[0] == "x":
            return chr(int(s[1:], 16))
        return s
    return re.sub(r"\\([0-7]{1,3}|x[0-9A-Fa-f]{1,2}|.)", one, body.replace("''", "'"), flags=re.DOTALL)


class _Tokens:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[_Token] = []
        self.pos = 0
        at = 0
        while at < len(text):
            m = _TOKEN.match(text, at)
            if m is None:
                raise _syntax(f"syntax error at or near {text[at:at + 20]!r} in COPY")
            kind = m.lastgroup
            raw = m.group(0)
            at = m.end()
            if kind == "space":
                continue
            if kind == "estring":
                self.tokens.append(_Token("string", _unescape_e_string(raw[2:-1]), raw, m.start(), m.end()))
            elif kind == "string":
                self.tokens.append(_Token("string", raw[1:-1].replace("''", "'"), raw, m.start(), m.end()))
            elif kind == "qident":
                self.tokens.append(_Token("ident", raw[1:-1].replace('""', '"'), raw, m.start(), m.end()))
            elif kind == "word":
                self.tokens.append(_Token("word", raw.upper(), raw, m.start(), m.end()))
            else:
                self.tokens.append(_Token(kind or "punct", raw, raw, m.start(), m.end()))

    def peek(self, offset: int = 0) -> _Token | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self) -> _Token:
        token = self.peek()
        if token is None:
            raise _syntax("syntax error at end of COPY statement")
        self.pos += 1
        return token

    def accept(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind in ("word", "punct") and token.text in words:
            self.pos += 1
            return True
        return False

    def expect(self, word: str) -> None:
        if not self.accept(word):
            token = self.peek()
            near = token.raw if token is not None else "end of input"
            raise _syntax(f'syntax error at or near "{near}" in COPY (expected {word})')

    def done(self) -> bool:
        while self.accept(";"):
            pass
        return self.peek() is None


# --- statement ----------------------------------------------------------------------------------

_QUERY_WORDS = ("SELECT", "WITH", "VALUES", "TABLE")


def parse_copy(text: str) -> CopyStatement:
    """The COPY statement `text`, or CopyRefused (42601 syntax, 0A000 unsupported, 42501 a file/PROGRAM)."""
    tokens = _Tokens(_without_query(text)[0])
    query = _without_query(text)[1]
    tokens.expect("COPY")
    old_binary = tokens.accept("BINARY")  # COPY BINARY table ... (before PostgreSQL 7.3, still accepted)
    schema = table = None
    columns: tuple[str, ...] = ()
    if query is not None:
        tokens.expect("(")
        tokens.expect(")")
    else:
        schema, table = _qualified_name(tokens)
        if tokens.accept("("):
            columns = tuple(_name_list(tokens))
            tokens.expect(")")
    direction_token = tokens.next()
    direction = direction_token.text.lower() if direction_token.kind == "word" else ""
    if direction not in ("to", "from"):
        raise _syntax(f'syntax error at or near "{direction_token.raw}" in COPY (expected TO or FROM)')
    if query is not None and direction == "from":
        raise _syntax('syntax error at or near "FROM": COPY FROM needs a table, not a query')
    _endpoint(tokens, direction)
    options = _options(tokens, direction, old_binary)
    if tokens.accept("WHERE"):
        raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY FROM ... WHERE is not supported",
                          hint="Load into the table without WHERE, or INSERT ... SELECT the rows you want.")
    if not tokens.done():
        token = tokens.peek()
        assert token is not None
        raise _syntax(f'syntax error at or near "{token.raw}" in COPY')
    if query is not None:
        first = re.findall(r"[A-Za-z_]+", _strip_comments(query))[:1]
        if not first or first[0].upper() not in _QUERY_WORDS:
            raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY (query) TO supports only a SELECT query",
                              hint="Write the query as SELECT ... (INSERT/UPDATE/DELETE ... RETURNING are not copied).")
    return CopyStatement(direction, schema, table, columns, query, options)


def _strip_comments(text: str) -> str:
    return re.sub(r"--[^\n]*|/\*.*?\*/", " ", text, flags=re.DOTALL)


def _without_query(text: str) -> tuple[str, str | None]:
    """`text` with the parenthesised query of `COPY (query) TO` cut out, and that query."""
    m = re.match(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*COPY\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*\(",
                 text, re.IGNORECASE | re.DOTALL)
    if m is None:
        return text, None
    start = m.end()
    end = _closing_paren(text, start)
    return text[:start] + text[end:], text[start:end].strip()


def _closing_paren(text: str, start: int) -> int:
    """The index of the ')' that closes the '(' before `start`, skipping strings, identifiers, comments."""
    depth, i = 1, start
    n = len(text)
    while i < n:
        c = text[i]
        if c in "'\"":
            close = text.find(c, i + 1)
            while close != -1 and close + 1 < n and text[close + 1] == c:
                close = text.find(c, close + 2)
            if close == -1:
                raise _syntax("unterminated quoted string in COPY")
            i = close + 1
            continue
        if text.startswith("--", i):
            i = n if (nl := text.find("\n", i)) == -1 else nl + 1
            continue
        if text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close == -1:
                raise _syntax("unterminated comment in COPY")
            i = close + 2
            continue
        if c == "$":
            tag = re.match(r"\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$", text[i:])
            if tag is not None:
                close = text.find(tag.group(0), i + len(tag.group(0)))
                if close == -1:
                    raise _syntax("unterminated dollar-quoted string in COPY")
                i = close + len(tag.group(0))
                continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise _syntax("syntax error in COPY: the query's parenthesis is not closed")


def _name(tokens: _Tokens) -> str:
    token = tokens.next()
    if token.kind == "ident":
        return token.text
    if token.kind == "word":
        return token.raw.lower()
    raise _syntax(f'syntax error at or near "{token.raw}" in COPY (expected a name)')


def _qualified_name(tokens: _Tokens) -> tuple[str | None, str]:
    first = _name(tokens)
    if tokens.accept("."):
        second = _name(tokens)
        if tokens.accept("."):
            raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY does not take a database-qualified table name",
                              hint="Name the table as schema.table.")
        return first, second
    return None, first


def _name_list(tokens: _Tokens) -> list[str]:
    names = [_name(tokens)]
    while tokens.accept(","):
        names.append(_name(tokens))
    return names


def _endpoint(tokens: _Tokens, direction: str) -> None:
    token = tokens.next()
    wanted = "STDOUT" if direction == "to" else "STDIN"
    if token.kind == "word" and token.text == wanted:
        return
    if token.kind == "string" or (token.kind == "word" and token.text == "PROGRAM"):
        what = "a program" if token.kind == "word" else "a file on the server"
        raise CopyRefused(
            "42501", "HD_ERR_COPY_SERVER_FILE",
            f"COPY {direction.upper()} {what} is not allowed; only COPY {direction.upper()} {wanted} is served",
            hint=f"Use COPY ... {direction.upper()} {wanted} (psql: \\copy ... {direction} 'file'), "
                 "which reads or writes the file on the client.")
    raise _syntax(f'syntax error at or near "{token.raw}" in COPY (expected {wanted})')


# --- options -------------------------------------------------------------------------------------

def _options(tokens: _Tokens, direction: str, old_binary: bool) -> CopyOptions:
    given: dict[str, object] = {}
    if old_binary:
        given["format"] = "binary"
    tokens.accept("WITH")
    token = tokens.peek()
    if token is not None and token.text == "(" and token.kind == "punct":
        tokens.next()
        _new_style(tokens, given)
        tokens.expect(")")
    else:
        _old_style(tokens, given)
    return _validated(given, direction)


def _set(given: dict[str, object], name: str, value: object) -> None:
    if name in given:
        raise _syntax("conflicting or redundant options")
    given[name] = value


def _string_value(tokens: _Tokens, option: str) -> str:
    token = tokens.next()
    if token.kind not in ("string", "word", "ident", "number"):
        raise _syntax(f"{option} requires a string value")
    return token.text if token.kind != "word" else token.raw


def _boolean(tokens: _Tokens, option: str, *, match: bool = False) -> object:
    token = tokens.peek()
    if token is None or (token.kind == "punct" and token.text in (",", ")")):
        return True
    tokens.next()
    value = (token.raw if token.kind == "word" else token.text).lower()
    if value in ("true", "on", "1", "t", "yes", "y"):
        return True
    if value in ("false", "off", "0", "f", "no", "n"):
        return False
    if match and value == "match":
        return "match"
    raise _syntax(f"{option} requires a Boolean value" + (' or "match"' if match else ""))


def _column_list(tokens: _Tokens, option: str, *, star: bool) -> tuple[str, ...] | str:
    if star and tokens.accept("*"):
        return STAR
    if not tokens.accept("("):
        raise _syntax(f"argument to option \"{option}\" must be a list of column names")
    names = tuple(_name_list(tokens))
    tokens.expect(")")
    return names


def _new_style(tokens: _Tokens, given: dict[str, object]) -> None:
    while True:
        token = tokens.next()
        if token.kind != "word":
            raise _syntax(f'syntax error at or near "{token.raw}" in COPY options')
        name = token.text.lower()
        if name == "format":
            _set(given, "format", _string_value(tokens, "FORMAT").lower())
        elif name in ("delimiter", "null", "quote", "escape", "encoding"):
            _set(given, name, _string_value(tokens, name.upper()))
        elif name == "header":
            _set(given, "header", _boolean(tokens, "header", match=True))
        elif name == "freeze":
            _set(given, "freeze", _boolean(tokens, "freeze"))
        elif name in ("force_quote", "force_not_null", "force_null"):
            _set(given, name, _column_list(tokens, name, star=name == "force_quote"))
        elif name == "oids":
            raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY OIDS is not supported (tables have no OIDs)")
        else:
            raise CopyRefused("42601", "HD_ERR_COPY_OPTION", f'option "{name}" not recognized',
                              hint="COPY takes FORMAT, HEADER, DELIMITER, NULL, QUOTE, ESCAPE, FORCE_QUOTE, "
                                   "FORCE_NOT_NULL, FORCE_NULL and ENCODING.")
        if not tokens.accept(","):
            return


def _old_style(tokens: _Tokens, given: dict[str, object]) -> None:
    while (token := tokens.peek()) is not None and token.kind == "word":
        word = token.text
        if word == "WHERE":
            return
        tokens.next()
        if word == "BINARY":
            _set(given, "format", "binary")
        elif word == "CSV":
            _set(given, "format", "csv")
        elif word == "HEADER":
            _set(given, "header", True)
        elif word in ("DELIMITER", "NULL", "QUOTE", "ESCAPE", "ENCODING"):
            tokens.accept("AS")
            _set(given, word.lower(), _string_value(tokens, word))
        elif word == "FORCE":
            if tokens.accept("QUOTE"):
                if tokens.accept("*"):
                    _set(given, "force_quote", STAR)
                else:
                    _set(given, "force_quote", tuple(_name_list(tokens)))
            elif tokens.accept("NOT"):
                tokens.expect("NULL")
                _set(given, "force_not_null", tuple(_name_list(tokens)))
            elif tokens.accept("NULL"):
                _set(given, "force_null", tuple(_name_list(tokens)))
            else:
                raise _syntax("syntax error at or near FORCE in COPY")
        elif word == "OIDS":
            raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY OIDS is not supported (tables have no OIDs)")
        else:
            raise _syntax(f'syntax error at or near "{token.raw}" in COPY')


def _validated(given: dict[str, object], direction: str) -> CopyOptions:
    """PostgreSQL 15's ProcessCopyOptions checks, with its messages and SQLSTATEs."""
    fmt = str(given.get("format", "text"))
    if fmt not in FORMATS:
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION", f'COPY format "{fmt}" not recognized')
    encoding = given.get("encoding")
    if encoding is not None and str(encoding).lower().replace("-", "").replace("_", "") not in ("utf8", "unicode"):
        raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", f"COPY ENCODING {encoding!r} is not supported",
                          hint="Send UTF8 data (the only server and client encoding served).")
    if given.get("freeze"):
        raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", "COPY FREEZE is not supported")
    binary, csv = fmt == "binary", fmt == "csv"
    if binary and "delimiter" in given:
        raise _syntax("cannot specify DELIMITER in BINARY mode")
    if binary and "null" in given:
        raise _syntax("cannot specify NULL in BINARY mode")
    if binary and given.get("header"):
        raise _syntax("cannot specify HEADER in BINARY mode")
    header = given.get("header", False)
    if header == "match" and direction == "to":
        raise CopyRefused("0A000", "HD_ERR_UNSUPPORTED", 'cannot use "match" with HEADER in COPY TO')
    delimiter = str(given.get("delimiter", "," if csv else "\t"))
    null = str(given.get("null", "" if csv else "\\N"))
    quote = str(given.get("quote", '"'))
    escape = str(given.get("escape", quote))
    if len(delimiter.encode()) != 1:
        raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", "COPY delimiter must be a single one-byte character")
    if delimiter in "\r\n":
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION", "COPY delimiter cannot be newline or carriage return")
    if "\r" in null or "\n" in null:
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION",
                          "COPY null representation cannot use newline or carriage return")
    if not csv and delimiter in "\\.abcdefghijklmnopqrstuvwxyz0123456789":
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION", f'COPY delimiter cannot be "{delimiter}"')
    if not csv and ("quote" in given or "escape" in given):
        which = "quote" if "quote" in given else "escape"
        raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", f"COPY {which} available only in CSV mode")
    if csv and len(quote.encode()) != 1:
        raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", "COPY quote must be a single one-byte character")
    if csv and delimiter == quote:
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION", "COPY delimiter and quote must be different")
    if csv and len(escape.encode()) != 1:
        raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", "COPY escape must be a single one-byte character")
    for name, to_only in (("force_quote", True), ("force_not_null", False), ("force_null", False)):
        if name in given:
            label = name.replace("_", " ")
            if not csv:
                raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", f"COPY {label} available only in CSV mode")
            if to_only and direction != "to":
                raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", f"COPY {label} only available using COPY TO")
            if not to_only and direction != "from":
                raise CopyRefused("0A000", "HD_ERR_COPY_OPTION", f"COPY {label} only available using COPY FROM")
    if not binary and delimiter in null:
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION", "COPY delimiter must not appear in the NULL specification")
    if csv and quote in null:
        raise CopyRefused("22023", "HD_ERR_COPY_OPTION",
                          "CSV quote character must not appear in the NULL specification")
    force_quote = given.get("force_quote", ())
    return CopyOptions(
        format=fmt, header=bool(header), header_match=header == "match", delimiter=delimiter, null=null,
        quote=quote, escape=escape,
        force_quote=force_quote if isinstance(force_quote, str) else tuple(force_quote),  # type: ignore[arg-type]
        force_not_null=tuple(given.get("force_not_null", ())),  # type: ignore[arg-type]
        force_null=tuple(given.get("force_null", ())),  # type: ignore[arg-type]
    )
