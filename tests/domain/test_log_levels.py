"""STUDYSTREAM_LOG_LEVELS is read from the environment: every string either parses to levels a logger
accepts or is refused with a ValueError that names the entry (never another exception, never a guess)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.settings import Settings
from domain.log_levels import LEVELS, format_log_levels, parse_log_levels

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def test_entries_parse_case_insensitively_with_spaces_and_aliases() -> None:
    assert parse_log_levels("") == {}
    assert parse_log_levels("   ") == {}
    assert parse_log_levels("faust=INFO") == {"faust": "INFO"}
    assert parse_log_levels(" faust = info , aiokafka=DEBUG,mode.worker=warn,x_1=Fatal") == {
        "faust": "INFO",
        "aiokafka": "DEBUG",
        "mode.worker": "WARNING",
        "x_1": "CRITICAL",
    }


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("faust", "'faust': expected logger=LEVEL"),
        ("faust:INFO", "'faust:INFO': expected logger=LEVEL"),
        ("faust=LOUD", "'LOUD' is not a log level"),
        ("faust=", "'' is not a log level"),
        ("=INFO", "'' is not a logger name"),
        ("faust=INFO,", "'': expected logger=LEVEL"),
        ("faust=INFO,,mode=INFO", "'': expected logger=LEVEL"),
        ("faust=INFO,faust=DEBUG", "logger faust is named twice"),
        ("fau st=INFO", "'fau st' is not a logger name"),
        ("faust.=INFO", "'faust.' is not a logger name"),
        ("1faust=INFO", "'1faust' is not a logger name"),
        ("fäust=INFO", "'fäust' is not a logger name"),
        ("faust=INFO=DEBUG", "'INFO=DEBUG' is not a log level"),
        ("faust=10", "'10' is not a log level"),
    ],
)
def test_a_bad_entry_is_refused_with_the_entry_named(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_log_levels(text)


def test_a_long_hostile_entry_is_quoted_short_and_without_control_characters() -> None:
    with pytest.raises(ValueError) as caught:
        parse_log_levels("x" * 10_000 + "\x1b[2J\n=INFO")
    message = str(caught.value)
    assert len(message) < 300 and "\x1b" not in message and "\n" not in message


_levels = st.sampled_from([*LEVELS, "warn", "info", "Debug", "fatal"])
_FIRST = "abcxyzABCXYZ_"
_segment = st.builds(lambda a, b: a + b, st.sampled_from(_FIRST), st.text(alphabet=_FIRST + "0189", max_size=8))
_names = st.lists(_segment, min_size=1, max_size=4).map(".".join)
_valid = st.dictionaries(_names, _levels, max_size=6)


@settings(max_examples=200, deadline=None)
@given(_valid)
def test_a_well_formed_value_round_trips(levels: dict[str, str]) -> None:
    text = ", ".join(f"{name} = {level}" for name, level in levels.items())
    parsed = parse_log_levels(text)
    assert list(parsed) == list(levels)
    assert all(value in LEVELS for value in parsed.values())
    assert parse_log_levels(format_log_levels(parsed)) == parsed


_hostile = st.one_of(
    st.text(max_size=200),
    st.text(alphabet=st.sampled_from("=,. _aZ9\t\n\x00é=INFODEBUGwarn"), max_size=80),
    _valid.map(lambda levels: ",".join(f"{n}={lv}" for n, lv in levels.items())),
    st.lists(st.text(max_size=12), max_size=5).map("=".join),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_hostile)
def test_any_string_parses_to_levels_a_logger_accepts_or_is_a_value_error(text: str) -> None:
    try:
        parsed = parse_log_levels(text)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    for name, level in parsed.items():
        assert NAME.fullmatch(name) and name.isascii()
        logging.getLogger("hypothesis-probe").setLevel(level)  # accepted by logging itself
    assert parse_log_levels(format_log_levels(parsed)) == parsed


def test_the_setting_is_validated_at_start_with_the_setting_named(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDYSTREAM_LOG_LEVELS", "faust=INFO, aiokafka=debug")
    assert Settings().log_level_overrides == {"faust": "INFO", "aiokafka": "DEBUG"}
    assert Settings().log_levels == "faust=INFO,aiokafka=DEBUG"  # canonical: what a child process is given
    monkeypatch.setenv("STUDYSTREAM_LOG_LEVELS", "faust=chatty")
    with pytest.raises(ValueError, match=r"log_levels[\s\S]*'chatty' is not a log level"):
        Settings()
    monkeypatch.setenv("STUDYSTREAM_LOG_LEVELS", "")
    monkeypatch.setenv("STUDYSTREAM_LOG_LEVEL", "debug")
    monkeypatch.setenv("STUDYSTREAM_LOG_FORMAT", "json")
    assert (Settings().log_level, Settings().log_format) == ("DEBUG", "json")
    monkeypatch.setenv("STUDYSTREAM_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="log_format"):
        Settings()
