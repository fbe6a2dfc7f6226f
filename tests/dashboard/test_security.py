"""Sign-in and session edges over HTTP: where `next` may lead, session expiry, non-ASCII tokens."""

from __future__ import annotations

import time

import httpx
import pytest
from pydantic import SecretStr

from services.dashboard.security import SESSION_MAX_AGE_S, Guard
from tests.dashboard.support import TOKEN, Running, sign_in
from tests.dashboard.test_http import error_line

OFF_SITE = [
    "/\\evil.example",  # browsers read the backslash as a slash
    "/\t/evil.example",  # and drop the tab
    "/a\r\nset-cookie: x=1",  # CR/LF would break the Location header
    "/a\x7f",
    "//evil.example",
    "https://evil.example/",
    "evil.example",
]


@pytest.mark.parametrize("target", OFF_SITE)
async def test_sign_in_never_leads_off_site(client: httpx.AsyncClient, target: str) -> None:
    answer = await client.post("/login", data={"token": TOKEN, "name": "tester", "next": target})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    page = await client.get("/login", params={"next": target})
    assert page.status_code == 200
    assert '<input type="hidden" name="next" value="/">' in page.text


async def test_sign_in_leads_to_a_page_of_this_site(client: httpx.AsyncClient) -> None:
    answer = await client.post("/login", data={"token": TOKEN, "name": "tester", "next": "/runs?job=stats"})
    assert answer.status_code == 303
    assert answer.headers["location"] == "/runs?job=stats"


def _cookie_issued(seconds_ago: float) -> str:
    """A session cookie signed with the operator token `seconds_ago` ago."""
    past = Guard(SecretStr(TOKEN), clock=lambda: time.time() - seconds_ago)
    return past.sign_in(TOKEN, "tester")


@pytest.mark.parametrize(("seconds_ago", "status"), [(SESSION_MAX_AGE_S - 60, 303), (SESSION_MAX_AGE_S + 60, 403)])
async def test_the_server_refuses_a_session_older_than_its_max_age(
    dashboard: Running, client: httpx.AsyncClient, seconds_ago: int, status: int
) -> None:
    value = _cookie_issued(seconds_ago)
    session = Guard(SecretStr(TOKEN), clock=lambda: time.time() - seconds_ago).session(value)
    assert session is not None
    csrf = dashboard.dashboard.guard.csrf_token(session)
    answer = await client.post("/logout", data={"csrf": csrf}, headers={"cookie": f"pulse_session={value}"})
    assert answer.status_code == status, answer.text[:300]
    if status == 403:
        assert error_line(answer.text) == "sign in with the operator token first"


async def test_a_non_ascii_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    await sign_in(client)
    answer = await client.post("/logout", data={"csrf": "é" * 64})
    assert answer.status_code == 403
    assert "CSRF token" in error_line(answer.text)


async def test_a_non_ascii_session_mac_is_no_session(client: httpx.AsyncClient) -> None:
    cookie = f'pulse_session="{_cookie_issued(0).rsplit(".", 1)[0]}.é"'
    page = await client.get("/schedules", headers={"cookie": cookie.encode("utf-8")})
    assert page.status_code == 200
    answer = await client.post("/logout", data={"csrf": "0" * 64}, headers={"cookie": cookie.encode("utf-8")})
    assert answer.status_code == 403
    assert error_line(answer.text) == "sign in with the operator token first"
