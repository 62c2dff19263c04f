"""Client-chosen ids and text: one id pattern, and no control or format characters in what people read."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hd_core.api_keys import normalise_cidrs
from hd_core.client_values import (
    CIDR_PATTERN,
    NON_BLANK_PATTERN,
    check_plain_text,
    email_pattern,
    email_problem,
    hidden_character,
    is_client_id,
    plain_text_pattern,
)
from hd_core.errors import InvalidRequest
from hd_core.models import new_id


@pytest.mark.parametrize("value", ["mask_ssn", "a", "tag.v2", "bind.crm-x", "A" * 128, new_id("usr")])
def test_ids_of_letters_digits_and_separators_are_accepted(value: str) -> None:
    assert is_client_id(value)


@pytest.mark.parametrize(
    "value",
    ["", "a/b", "a\x00b", "a#b", "a:b", "a%2Fb", "a~b", "a b", "_leading", "-leading", "A" * 129, "caf\u00e9",
     "a\u202eb", "a\n", None, 7],
)
def test_ids_that_a_path_or_a_store_key_cannot_carry_are_refused(value: object) -> None:
    assert not is_client_id(value)


@pytest.mark.parametrize(
    "character",
    ["\x00", "\x1b", "\x7f", "\x85", "\u200e", "\u200f", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e",
     "\u2066", "\u2067", "\u2068", "\u2069", "\u200b", "\ufeff", "\u2028", "\u2029", "\ud800", "\n", "\t"],
)
def test_control_and_format_characters_are_refused_in_names(character: str) -> None:
    assert hidden_character(f"Ann{character}Smith") == character
    with pytest.raises(InvalidRequest, match=f"U\\+{ord(character):04X}"):
        check_plain_text(f"Ann{character}Smith", "a name")


def test_multiline_text_keeps_line_breaks_and_tabs_but_nothing_else_hidden() -> None:
    assert check_plain_text("line one\n\tline two", "a reason", multiline=True) == "line one\n\tline two"
    with pytest.raises(InvalidRequest):
        check_plain_text("approved \u202eby nobody", "a reason", multiline=True)


@pytest.mark.parametrize("text", ["Zoë Ångström", "李雷", "O'Brien-Smith", "مرحبا", "a@example.com", "🦆"])
def test_ordinary_text_of_any_script_is_accepted(text: str) -> None:
    assert check_plain_text(text, "a name") == text


@pytest.mark.parametrize("multiline", [False, True])
def test_the_documented_pattern_agrees_with_the_rule_on_the_basic_plane(multiline: bool) -> None:
    pattern = re.compile(plain_text_pattern(multiline=multiline))
    for point in range(0x10000):
        if 0xD800 <= point <= 0xDFFF:
            continue  # lone surrogates: refused by the rule, not expressible in the pattern
        ch = chr(point)
        assert (pattern.match(f"a{ch}b") is not None) == (hidden_character(ch, multiline=multiline) is None), hex(point)


# The API document's patterns promise that what matches them is accepted: each is checked against the rule it states.


@settings(max_examples=200, deadline=None)
@given(st.from_regex(CIDR_PATTERN))
def test_every_network_the_cidr_pattern_allows_is_one_the_key_service_reads(cidr: str) -> None:
    assert len(normalise_cidrs([cidr])) == 1


@pytest.mark.parametrize("text", ["01.2.3.4", "1.2.3.4/33", "::1/129", "fe80::1%eth0", "10.0.0.0/8 "])
def test_the_cidr_pattern_refuses_what_ipaddress_would_read_differently_or_not_at_all(text: str) -> None:
    assert re.fullmatch(CIDR_PATTERN, text) is None


@settings(max_examples=200, deadline=None)
@given(st.from_regex(email_pattern(), fullmatch=True).filter(lambda email: len(email) <= 254))
def test_every_address_the_email_pattern_allows_is_one_an_invitation_takes(email: str) -> None:
    assert email_problem(email) is None


def test_the_email_pattern_refuses_hidden_characters_and_a_missing_host() -> None:
    for email in ("a\u202e@example.com", "a\x00@example.com", "name", "a b@example.com", "a@-x.com"):
        assert re.fullmatch(email_pattern(), email) is None, email
        assert email_problem(email) is not None, email


def test_non_blank_means_something_strip_keeps() -> None:
    blanks = [chr(point) for point in range(0x110000) if chr(point).isspace()]
    assert all(re.search(NON_BLANK_PATTERN, blank) is None for blank in blanks)
    assert re.search(NON_BLANK_PATTERN, " \u3000x\t") is not None
