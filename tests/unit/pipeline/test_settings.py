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


# --- identity comes from the credential -----------------------------------------------------------------

IDENTITY_NAMES = ["hd.org_id", "hd.org", "hd.role", "hd.user_id", "hd.user", "hd.key_id", "hd.env",
                  "hd.department", "hd.region", "hd.scopes", "hd.agent_id", "hd.agent_framework"]


@pytest.mark.parametrize("name", [*IDENTITY_NAMES, "HD.ROLE", "hd.Org_Id"])
def test_setting_an_identity_is_refused_with_42501(name):
    settings = SessionSettings({}, "u")
    with pytest.raises(QueryError) as err:
        settings.set(name, "Owner")
    assert (err.value.sqlstate, err.value.code) == ("42501", "HD_ERR_IDENTITY_IMMUTABLE")
    assert "credential" in err.value.message
    assert err.value.hint
    assert not any(key == name.lower() for key, _ in settings.all())


@pytest.mark.parametrize("name", IDENTITY_NAMES)
def test_resetting_an_identity_is_refused_with_42501(name):
    with pytest.raises(QueryError) as err:
        SessionSettings({"hd.agent_id": "bot-1"}, "u").reset(name)
    assert (err.value.sqlstate, err.value.code) == ("42501", "HD_ERR_IDENTITY_IMMUTABLE")


def test_refusal_hint_says_how_to_connect_as_someone_else():
    with pytest.raises(QueryError) as err:
        SessionSettings({}, "u").set("hd.role", "Owner")
    assert "API key" in (err.value.hint or "")
    with pytest.raises(QueryError) as err:
        SessionSettings({}, "u").set("hd.agent_framework", "trusted")
    assert "-c hd.agent_framework=" in (err.value.hint or "")


@pytest.mark.parametrize("name", ["hd.orgid", "hd.foo", "hd.request", "hd.dialect.x", "hd."])
def test_unknown_hd_settings_are_42704_not_session_variables(name):
    settings = SessionSettings({}, "u")
    with pytest.raises(QueryError) as err:
        settings.set(name, "x")
    assert (err.value.sqlstate, err.value.code) == ("42704", "HD_ERR_UNKNOWN_SETTING")
    assert "hd.request_id" in (err.value.hint or "")
    with pytest.raises(QueryError):
        settings.reset(name)


@pytest.mark.parametrize("name", ["hd.dialect", "hd.request_id", "hd.priority"])
def test_the_hd_settings_the_engine_reads_can_be_set_and_reset(name):
    settings = SessionSettings({}, "u")
    settings.set(name, "duckdb")
    assert settings.get(name) == "duckdb"
    settings.reset(name)
    assert name not in dict(settings.all())


def test_custom_settings_outside_hd_keep_postgres_behaviour():
    settings = SessionSettings({}, "u")
    settings.set("myapp.tenant", "t1")
    assert settings.get("myapp.tenant") == "t1"


def test_agent_identity_is_taken_from_startup_only():
    settings = SessionSettings({"hd.agent_id": "bot-1", "hd.agent_framework": "langchain"}, "u")
    assert settings.with_prefix("hd.") == {"hd.agent_id": "bot-1", "hd.agent_framework": "langchain"}


@pytest.mark.parametrize("name", [n for n in IDENTITY_NAMES if not n.startswith("hd.agent")])
def test_an_identity_claimed_at_startup_refuses_the_connection(name):
    with pytest.raises(QueryError) as err:
        SessionSettings({"application_name": "psql", name: "Owner"}, "u")
    assert (err.value.sqlstate, err.value.code) == ("42501", "HD_ERR_IDENTITY_IMMUTABLE")


def test_unknown_hd_startup_settings_are_ignored_like_other_unhonoured_options():
    settings = SessionSettings({"hd.foo": "1", "TimeZone": "Europe/Paris"}, "u")
    assert settings.with_prefix("hd.") == {}


def test_reset_all_keeps_the_agent_identity():
    settings = SessionSettings({"hd.agent_id": "bot-1", "hd.agent_framework": "langchain"}, "u")
    settings.set("application_name", "x")
    settings.reset_all()
    assert settings.get("application_name") == ""
    assert settings.get("hd.agent_id") == "bot-1"
    assert settings.get("hd.agent_framework") == "langchain"
