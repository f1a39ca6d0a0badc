"""Who may see the web view: a bearer token or HTTP basic credentials, compared in constant time (pure).

``/health`` stays open (load balancers and supervisors probe it without credentials); every other
page and API requires credentials unless ``web_auth_disabled`` is set for local development. With no
credentials configured and authentication not disabled, protected pages answer 401: the view is
locked, never silently open.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass

from app.settings import Settings

REALM = "StudyStream"


@dataclass(frozen=True, slots=True)
class WebCredentials:
    """What the web view accepts; empty strings mean "not configured"."""

    disabled: bool = False
    token: str = ""
    basic_user: str = ""
    basic_password: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> WebCredentials:
        return cls(
            disabled=settings.web_auth_disabled,
            token=settings.web_token.get_secret_value() if settings.web_token else "",
            basic_user=settings.web_basic_user,
            basic_password=settings.web_basic_password.get_secret_value() if settings.web_basic_password else "",
        )

    @property
    def basic_enabled(self) -> bool:
        return bool(self.basic_user and self.basic_password)

    @property
    def locked(self) -> bool:
        """Authentication is required but nothing is configured: nobody gets in."""
        return not self.disabled and not self.token and not self.basic_enabled


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def is_authorized(authorization: str | None, credentials: WebCredentials) -> bool:
    """Whether an ``Authorization`` header value grants access."""
    if credentials.disabled:
        return True
    if not authorization:
        return False
    scheme, _, value = authorization.strip().partition(" ")
    scheme, value = scheme.lower(), value.strip()
    if scheme == "bearer" and credentials.token:
        return _equal(value, credentials.token)
    if scheme == "basic" and credentials.basic_enabled:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user, sep, password = decoded.partition(":")
        # Both compared (no short circuit) so timing does not tell which one was wrong.
        user_ok = _equal(user, credentials.basic_user)
        password_ok = _equal(password, credentials.basic_password)
        return bool(sep) and user_ok and password_ok
    return False


def challenge(credentials: WebCredentials) -> str:
    """The ``WWW-Authenticate`` value of a 401: basic first so a browser shows its login prompt."""
    if credentials.basic_enabled:
        return f'Basic realm="{REALM}", charset="UTF-8"'
    return f'Bearer realm="{REALM}"'
