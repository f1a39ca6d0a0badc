"""web.auth: which Authorization headers open the web view (pure, no worker)."""

from __future__ import annotations

import base64

from app.settings import Settings
from web.auth import WebCredentials, challenge, is_authorized

BOTH = WebCredentials(token="s3cret-token", basic_user="op", basic_password="pw:with:colons")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_right_bearer_token_or_basic_credentials_are_accepted() -> None:
    assert is_authorized("Bearer s3cret-token", BOTH)
    assert is_authorized("bearer   s3cret-token ", BOTH)
    assert is_authorized(basic("op", "pw:with:colons"), BOTH)


def test_missing_wrong_or_malformed_credentials_are_refused() -> None:
    for header in (
        None,
        "",
        "Bearer",
        "Bearer s3cret-toke",
        "Token s3cret-token",
        basic("op", "wrong"),
        basic("other", "pw:with:colons"),
        "Basic not-base64!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ):
        assert not is_authorized(header, BOTH), header


def test_a_scheme_that_is_not_configured_is_refused() -> None:
    token_only = WebCredentials(token="t")
    assert not is_authorized(basic("", "t"), token_only)
    basic_only = WebCredentials(basic_user="op", basic_password="pw")
    assert not is_authorized("Bearer pw", basic_only) and not is_authorized("Bearer ", basic_only)


def test_nothing_configured_locks_the_view_unless_auth_is_disabled() -> None:
    assert WebCredentials().locked and not is_authorized("Bearer ", WebCredentials())
    assert is_authorized(None, WebCredentials(disabled=True)) and not WebCredentials(disabled=True).locked


def test_credentials_come_from_settings_and_the_challenge_invites_basic_when_enabled(isolated_env) -> None:
    settings = Settings(web_token="tok", web_basic_user="u", web_basic_password="p")
    credentials = WebCredentials.from_settings(settings)
    assert (credentials.token, credentials.basic_user, credentials.basic_password) == ("tok", "u", "p")
    assert challenge(credentials).startswith("Basic ")
    assert challenge(WebCredentials(token="tok")).startswith("Bearer ")
    assert WebCredentials.from_settings(Settings()).locked
