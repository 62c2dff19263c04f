"""How `hd keys|users|policies|audit` show API answers: tables, records and the text of one cell."""

from __future__ import annotations

from typing import Any

import pytest

from engine_host.cli.listing import ELLIPSIS, ListingColumn, cell_text, fit, printable, render_listing, render_record

# --- cells ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (None, "-"),
        (True, "yes"),
        (False, "no"),
        (0, "0"),
        (["query:read", "tables:list"], "query:read, tables:list"),
        ([], "-"),
        (("a", None), "a, -"),
        ({"b": 1, "a": [2]}, '{"a": [2], "b": 1}'),
    ],
)
def test_a_json_value_reads_as_plain_text_in_a_cell(value: object, shown: str) -> None:
    assert cell_text(value) == shown


def test_an_aware_timestamp_is_shown_in_utc_to_the_second_with_a_z() -> None:
    assert cell_text("2024-03-01T02:04:05.678+02:00") == "2024-03-01 00:04:05Z"


def test_a_naive_timestamp_is_shown_to_the_second_without_a_zone() -> None:
    assert cell_text("2024-03-01T02:04:05.678") == "2024-03-01 02:04:05"


def test_text_that_only_starts_like_a_timestamp_is_shown_as_it_is() -> None:
    assert cell_text("2024-03-01T02:04:05 and then\nsome") == "2024-03-01T02:04:05 and then some"


def test_each_run_of_control_characters_becomes_one_space() -> None:
    assert printable("a\x1b]0;x\x07b\r\n\tc\x85d") == "a ]0;x b c d"


# --- fitting --------------------------------------------------------------------------------------


def test_text_that_fits_its_width_is_left_alone() -> None:
    assert fit("abcdef", 6) == "abcdef"


def test_text_one_character_too_long_ends_in_an_ellipsis_at_exactly_the_width() -> None:
    cut = fit("abcdefg", 6)

    assert cut == "abcde" + ELLIPSIS and len(cut) == 6


# --- tables and records ---------------------------------------------------------------------------


def test_a_column_is_as_wide_as_its_header_when_every_value_is_shorter() -> None:
    rows: list[dict[str, Any]] = [{"id": "k1"}, {"id": "k22"}]

    header, first, second = render_listing([ListingColumn("KEY_ID", "id"), ListingColumn("ENV", "env")], rows,
                                           empty="none").splitlines()

    assert (header, first, second) == ("KEY_ID  ENV", "k1      -", "k22     -")


def test_a_listing_without_rows_is_the_sentence_given_not_a_bare_header() -> None:
    assert render_listing([ListingColumn("KEY_ID", "id")], [], empty="no API keys") == "no API keys"


def test_a_record_aligns_its_values_after_the_longest_label_and_never_cuts_them() -> None:
    long_hash = "h" * 80
    record = {"key_id": "key_1", "hash": long_hash, "revoked_at": None}

    text = render_record([("key id", "key_id"), ("hash", "hash"), ("revoked", "revoked_at")], record)

    assert text.splitlines() == ["key id   key_1", f"hash     {long_hash}", "revoked  -"]
