"""Who may act on the dashboard: the operator token, the session cookie and CSRF tokens.

Without `PULSE_DASHBOARD_TOKEN` the dashboard is read-only: every action is refused.
With it, an operator signs in once by typing the token (and a name for the audit
trail); the answer is a session cookie `<nonce>.<issued>.<name>.<mac>` where the MAC is
an HMAC-SHA256 of nonce, issue time and name under the token, so the cookie never holds
the token and cannot be forged without it. The server refuses a cookie issued more than
`SESSION_MAX_AGE_S` ago (the cookie's Max-Age alone would leave a copied cookie valid).
Every form carries a CSRF token, the HMAC of the session nonce under the token: a page
of another site can make the browser send the cookie but cannot read the CSRF token.
The cookie is HttpOnly and SameSite=Strict as well.
Comparisons are constant-time, on bytes (a non-ASCII value is refused, not an error).
A sign-in's `next` page goes through `safe_next`, so it can only lead to this site.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import SecretStr

from shared.audit import check_actor

SESSION_COOKIE = "pulse_session"
CSRF_FIELD = "csrf"
#: Sessions last a working day; the operator signs in again after that.
SESSION_MAX_AGE_S = 12 * 3600


class Refused(Exception):
    """An action without the right to act: 403 with this message."""


@dataclass(frozen=True)
class Session:
    """A signed-in operator."""

    nonce: str
    name: str


class Guard:
    """Checks tokens, issues sessions, derives CSRF tokens."""

    def __init__(self, token: SecretStr | None, clock: Callable[[], float] = time.time) -> None:
        self._key = token.get_secret_value().encode() if token is not None else None
        self._clock = clock  # seconds since the epoch; tests pass their own

    @property
    def enabled(self) -> bool:
        """False: the dashboard is read-only."""
        return self._key is not None

    def _mac(self, text: str) -> str:
        assert self._key is not None
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def check_name(self, name: str) -> str:
        """An operator name fit for the audit trail, or ValueError."""
        return check_actor(name)

    def sign_in(self, token: str, name: str) -> str:
        """The session cookie value for a correct `token`; Refused otherwise."""
        if self._key is None:
            raise Refused("the dashboard is read-only: set PULSE_DASHBOARD_TOKEN to enable actions")
        if not hmac.compare_digest(token.encode(), self._key):
            raise Refused("wrong operator token")
        nonce, issued = secrets.token_hex(16), int(self._clock())
        return f"{nonce}.{issued}.{name}.{self._mac(f'session:{nonce}:{issued}:{name}')}"

    def session(self, cookie: str | None) -> Session | None:
        """The session of a valid cookie issued less than `SESSION_MAX_AGE_S` ago, else None."""
        if self._key is None or not cookie:
            return None
        parts = cookie.split(".")
        if len(parts) < 4:
            return None
        nonce, issued, mac = parts[0], parts[1], parts[-1]
        name = ".".join(parts[2:-1])  # a name may hold dots
        if not _same(mac, self._mac(f"session:{nonce}:{issued}:{name}")):
            return None
        if not (issued.isascii() and issued.isdecimal()) or self._clock() - int(issued) > SESSION_MAX_AGE_S:
            return None
        return Session(nonce, name)

    def csrf_token(self, session: Session | None) -> str:
        """The CSRF token forms of this session carry ('' without a session)."""
        return self._mac(f"csrf:{session.nonce}") if session is not None and self._key is not None else ""

    def authorize(self, session: Session | None, csrf: str | None) -> Session:
        """The session allowed to act, or Refused saying what is missing."""
        if self._key is None:
            raise Refused("the dashboard is read-only: set PULSE_DASHBOARD_TOKEN to enable actions")
        if session is None:
            raise Refused("sign in with the operator token first")
        if not csrf or not _same(csrf, self.csrf_token(session)):
            raise Refused("missing or wrong CSRF token: reload the page and try again")
        return session


def session_cookie(value: str, *, secure: bool) -> str:
    """The Set-Cookie value of a session."""
    flags = f"; Max-Age={SESSION_MAX_AGE_S}; Path=/; HttpOnly; SameSite=Strict"
    return f"{SESSION_COOKIE}={value}{flags}{'; Secure' if secure else ''}"


def clear_cookie(name: str) -> str:
    return f"{name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


def _same(given: str, expected: str) -> bool:
    """Constant-time equality; on bytes, since `compare_digest` raises on non-ASCII str."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


def safe_next(target: str | None) -> str:
    """`target` when it is a path on this site, else "/" (where to go after signing in).

    Browsers read a backslash as a slash and drop tabs and newlines, so `/\\evil.example`
    and `/<TAB>/evil.example` would lead to another site; CR/LF would break the header.
    """
    if not target or "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return "/"
    return target
