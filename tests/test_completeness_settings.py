"""STUDYSTREAM_COMPLETENESS_RULES: read from the environment, refused at start-up when malformed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.settings import Settings
from domain.completeness import Signal, Source, parse_rules
from tests.conftest import worker_env

RULES = "ae=CT_SCANNER1,modality=CT:quiet=60s,trust=commitment+mpps; modality=cr:quiet=5s; *:quiet=30s"


def test_rules_from_the_environment_make_the_policy(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STUDYSTREAM_COMPLETENESS_RULES", RULES)
    monkeypatch.setenv("STUDYSTREAM_QUIET_PERIOD", "12")
    settings = Settings()
    assert settings.completeness_rules == RULES.replace("modality=cr", "modality=CR")  # kept in canonical form
    policy = settings.completeness_policy
    assert policy.default_quiet_period == 12.0 and len(policy.rules) == 3
    ct = policy.decide([Source("CT_SCANNER1", "CT")])
    assert (ct.quiet_period, ct.trusted_signals) == (60.0, frozenset({Signal.COMMITMENT, Signal.MPPS}))
    assert policy.decide([Source("CR1", "CR")]).quiet_period == 5.0


def test_no_rules_by_default_every_study_waits_the_quiet_period(isolated_env: Path) -> None:
    policy = Settings().completeness_policy
    assert policy.rules == () and policy.decide([Source("CT1", "CT")]).quiet_period == 30.0


def test_a_malformed_table_stops_the_start_naming_the_setting_and_the_rule(
    isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STUDYSTREAM_COMPLETENESS_RULES", "modality=CR:quiet=5s; modality=CT:quiet=sixty")
    with pytest.raises(ValidationError, match="completeness_rules") as raised:
        Settings()
    assert "completeness rule 2 ('modality=CT:quiet=sixty'): quiet 'sixty' is not a duration" in str(raised.value)


def test_a_worker_subprocess_gets_the_same_rules(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(completeness_rules=RULES)
    env = worker_env(settings)
    for name, value in env.items():
        if name.startswith("STUDYSTREAM_"):
            monkeypatch.setenv(name, value)
    assert Settings().completeness_policy == settings.completeness_policy


@hypothesis_settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=120), st.text(alphabet="aemodlityqurs=:,;*+ 0123456789.CTRh\\\n", max_size=80)))
def test_any_value_is_a_table_or_a_validation_error(isolated_env: Path, text: str) -> None:
    try:
        settings = Settings(completeness_rules=text)
    except ValidationError as exc:
        assert "completeness_rules" in str(exc)
        with pytest.raises(ValueError):
            parse_rules(text)
        return
    assert settings.completeness_policy.rules == parse_rules(text)
