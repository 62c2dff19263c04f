"""Timeouts in PostgreSQL's units and search_path as PostgreSQL reads it (values checked against PostgreSQL 15)."""

from __future__ import annotations

import pytest

from engine_host.pgcompat.gucs import SearchPath
from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.settings import SessionSettings, duration_milliseconds, parse_setting_command

TIMEOUTS = ("statement_timeout", "lock_timeout", "idle_in_transaction_session_timeout", "idle_session_timeout")


@pytest.mark.parametrize("name", TIMEOUTS)
@pytest.mark.parametrize(("value", "shown"), [
    ("1s", "1s"), ("500ms", "500ms"), ("2min", "2min"), ("1h", "1h"), ("1d", "1d"), ("250us", "0"),
    ("1000", "1s"), ("60000", "1min"), ("0", "0"), ("1.5s", "1500ms"), ("1.5", "2ms"), ("0.5ms", "0"),
    (" 1 s ", "1s"), ("1e3", "1s"), ("600us", "1ms"), ("0x10", "16ms"), ("010", "8ms"), ("1.5min", "90s"),
    ("+5s", "5s"), ("2147483647", "2147483647ms"), ("24d", "24d"),
])
def test_timeouts_take_postgres_units_and_show_as_postgres_does(name: str, value: str, shown: str) -> None:
    settings = SessionSettings({}, "u")
    settings.set(name, value)
    assert settings.get(name) == shown


@pytest.mark.parametrize(("value", "message", "hint"), [
    ("1x", 'invalid value for parameter "statement_timeout": "1x"',
     'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'),
    ("1S", 'invalid value for parameter "statement_timeout": "1S"',
     'Valid units for this parameter are "us", "ms", "s", "min", "h", and "d".'),
    ("abc", 'invalid value for parameter "statement_timeout": "abc"', None),
    ("", 'invalid value for parameter "statement_timeout": ""', None),
    ("25d", 'invalid value for parameter "statement_timeout": "25d"', "Value exceeds integer range."),
    ("-1s", '-1000 ms is outside the valid range for parameter "statement_timeout" (0 .. 2147483647)', None),
])
def test_timeouts_refuse_what_postgres_refuses(value: str, message: str, hint: str | None) -> None:
    settings = SessionSettings({}, "u")
    with pytest.raises(QueryError) as err:
        settings.set("statement_timeout", value)
    assert (err.value.sqlstate, err.value.code) == ("22023", "HD_ERR_INVALID_SETTING")
    assert err.value.message == message
    assert err.value.hint == hint
    assert settings.get("statement_timeout") == "0"


def test_a_startup_option_timeout_takes_units() -> None:
    assert SessionSettings({"statement_timeout": "5s"}, "u").get("statement_timeout") == "5s"


def test_duration_milliseconds_reads_the_shown_value_back() -> None:
    assert duration_milliseconds("2min") == 120_000
    assert duration_milliseconds("1500ms") == 1500
    assert duration_milliseconds("0") == 0


@pytest.mark.parametrize(("sql", "shown"), [
    ("SET search_path = ''", '""'),
    ("SET search_path = 'crm, main'", '"crm, main"'),
    ('SET search_path = crm, "Foo", FOO', 'crm, "Foo", foo'),
    ('SET search_path TO "$user", main', '"$user", main'),
    ("SET search_path TO 'Foo'", '"Foo"'),
])
def test_set_search_path_shows_each_value_as_one_identifier(sql: str, shown: str) -> None:
    command = parse_setting_command(sql)
    assert command is not None
    settings = SessionSettings({}, "u")
    settings.set(command.name, command.value)
    assert settings.get("search_path") == shown


def test_search_path_default_names_a_schema_that_exists() -> None:
    assert SessionSettings({}, "u").get("search_path") == "main"


def test_a_startup_search_path_is_kept_as_written() -> None:
    assert SessionSettings({"search_path": "crm,Main"}, "u").get("search_path") == "crm,Main"


def test_search_path_list_syntax_errors_are_refused() -> None:
    with pytest.raises(QueryError) as err:
        SessionSettings({}, "u").set("search_path", 'crm, "unclosed')
    assert err.value.code == "HD_ERR_INVALID_SETTING"
    assert err.value.hint == "List syntax is invalid."


def test_search_path_expands_user_and_lowercases_unquoted_names() -> None:
    path = SearchPath.of('"$user", CRM, "Mixed", crm', "usr_1")
    assert path.schemas == ("usr_1", "crm", "Mixed")
    assert path.existing(frozenset({"crm", "main"})) == ("crm",)
