"""Session settings: what drivers SET and SHOW, what we honour and what we refuse."""

from __future__ import annotations

import pytest

from engine_host.pipeline.errors import QueryError
from engine_host.pipeline.settings import SessionSettings, check_transaction_mode, parse_setting_command


def test_defaults_report_what_postgres_clients_expect():
    reported = dict(SessionSettings({}, "usr_1").reported())
    assert reported["server_version"].startswith("15.")
    assert reported["client_encoding"] == "UTF8"
    assert reported["DateStyle"] == "ISO, MDY"
    assert reported["integer_datetimes"] == "on"
    assert reported["standard_conforming_strings"] == "on"
    assert reported["TimeZone"] == "UTC"
    assert reported["session_authorization"] == "usr_1"


def test_set_application_name_is_reported_back():
    settings = SessionSettings({}, "u")
    assert settings.set("application_name", "dbeaver") == "application_name"
    assert settings.get("APPLICATION_NAME") == "dbeaver"


def test_startup_options_we_cannot_honour_are_ignored_not_fatal():
    settings = SessionSettings({"TimeZone": "Europe/Paris", "application_name": "psql"}, "u")
    assert settings.get("timezone") == "UTC"
    assert settings.get("application_name") == "psql"


@pytest.mark.parametrize(("name", "value"), [("TimeZone", "Europe/Paris"), ("client_encoding", "LATIN1"),
                                             ("DateStyle", "German")])
def test_values_we_cannot_honour_are_refused_with_a_hint(name, value):
    with pytest.raises(QueryError) as err:
        SessionSettings({}, "u").set(name, value)
    assert err.value.sqlstate == "22023"
    assert err.value.hint


def test_unknown_setting_is_42704_but_custom_dotted_names_are_session_variables():
    settings = SessionSettings({}, "u")
    with pytest.raises(QueryError) as err:
        settings.set("work_mem_typo", "1")
    assert err.value.sqlstate == "42704"
    settings.set("hd.request_id", "req-1")
    assert settings.get("hd.request_id") == "req-1"


def test_read_only_settings_cannot_change():
    with pytest.raises(QueryError) as err:
        SessionSettings({}, "u").set("server_version", "16")
    assert err.value.sqlstate == "55P02"


@pytest.mark.parametrize(
    ("sql", "verb", "name", "value"),
    [
        ("SET application_name = 'a b'", "SET", "application_name", "a b"),
        ("set extra_float_digits to 3", "SET", "extra_float_digits", "3"),
        ("SET TIME ZONE 'UTC'", "SET", "TIME ZONE", "UTC"),
        ("SET SESSION search_path TO sales, public;", "SET", "search_path", "sales, public"),
        ("SHOW transaction isolation level", "SHOW", "transaction isolation level", ""),
        ("RESET ALL", "RESET", "ALL", ""),
        ("SET datestyle TO DEFAULT", "RESET", "datestyle", ""),
        ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "SET TRANSACTION", "transaction",
         "ISOLATION LEVEL READ COMMITTED"),
    ],
)
def test_setting_commands_parse(sql, verb, name, value):
    cmd = parse_setting_command(sql)
    assert cmd is not None
    assert (cmd.verb, cmd.name, cmd.value) == (verb, name, value)


def test_serializable_is_refused_rather_than_silently_weakened():
    check_transaction_mode("ISOLATION LEVEL REPEATABLE READ")
    with pytest.raises(QueryError) as err:
        check_transaction_mode("ISOLATION LEVEL SERIALIZABLE")
    assert err.value.sqlstate == "0A000"
