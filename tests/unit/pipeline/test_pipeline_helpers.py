"""Pure pieces of the statement pipeline: keyword reading, command tags, startup options."""

from __future__ import annotations

import pytest

from engine_host.pipeline.pipeline import _ddl_tag, _startup_settings, leading_words


@pytest.mark.parametrize(
    ("sql", "words"),
    [
        ("  select 1", ["SELECT"]),
        ("-- note\n/* block */ BEGIN ISOLATION LEVEL", ["BEGIN", "ISOLATION", "LEVEL"]),
        ("/* only a comment */", []),
        ("", []),
    ],
)
def test_leading_words_skip_comments(sql, words):
    assert leading_words(sql)[: len(words)] == words


@pytest.mark.parametrize(
    ("sql", "tag"),
    [
        ("CREATE TABLE t (a INT)", "CREATE TABLE"),
        ("create or replace view v as select 1", "CREATE VIEW"),
        ("CREATE TABLE IF NOT EXISTS t (a INT)", "CREATE TABLE"),
        ("CREATE TABLE t AS SELECT 1", "SELECT 5"),
        ("DROP TABLE IF EXISTS t", "DROP TABLE"),
        ("ALTER TABLE t ADD COLUMN b INT", "ALTER TABLE"),
        ("CHECKPOINT", "CHECKPOINT"),
    ],
)
def test_ddl_command_tags_match_postgres(sql, tag):
    assert _ddl_tag(sql, 5) == tag


def test_startup_options_become_settings():
    settings = _startup_settings({
        "user": "u", "database": "hd", "application_name": "app",
        "options": "-c hd.agent_id=agent-7 --hd.agent_framework=langchain -c search_path=a\\ b",
    })
    assert settings == {"application_name": "app", "hd.agent_id": "agent-7", "hd.agent_framework": "langchain",
                        "search_path": "a b"}
