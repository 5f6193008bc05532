"""The browser session after Google sign-in: the refresh token lives in an HttpOnly cookie,
POST /auth/refresh trades it for an access token (rotating the cookie), logout clears it."""

from __future__ import annotations

import httpx

from tests.auth_google.conftest import StartApp
from tests.auth_google.test_google_signin import cookies_set, mock_sign_in, set_mock_user


def cookie_value(set_cookie_header: str) -> str:
    return set_cookie_header.split("=", 1)[1].split(";", 1)[0]


async def test_cookie_session_refresh_rotation_and_logout(start_app: StartApp,
                                                          oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    await set_mock_user(oidc_mock, "web-sub-dana", {"email": "dana@example.com",
                                                    "name": "Dana"})
    async with live.client() as browser:
        signed_in = await mock_sign_in(browser, "web-sub-dana")
        assert signed_in.status_code == 302
        first_cookie = cookie_value(cookies_set(signed_in)["aa_refresh"])

        # The page's first call: no token in the body, the cookie carries it.
        refreshed = await browser.post("/auth/refresh", json={})
        assert refreshed.status_code == 200, refreshed.text
        body = refreshed.json()
        assert body["accessToken"] and "refreshToken" not in body  # never exposed to JS
        rotated = cookies_set(refreshed)["aa_refresh"]
        assert "HttpOnly" in rotated and "SameSite=Strict" in rotated
        assert cookie_value(rotated) != first_cookie

        me = await browser.get("/api/me",
                               headers={"Authorization": f"Bearer {body['accessToken']}"})
        assert me.status_code == 200 and me.json()["email"] == "dana@example.com"

        # Replaying the spent cookie (a stolen copy) is refused and clears the cookie.
        # (From another browser: the same one would get the successor within the grace.)
        async with live.client() as thief:
            thief.headers["User-Agent"] = "thief-agent"
            thief.cookies.set("aa_refresh", first_cookie, domain="127.0.0.1", path="/auth")
            replay = await thief.post("/auth/refresh", json={})
        assert replay.status_code == 401
        assert "Max-Age=0" in cookies_set(replay)["aa_refresh"]

        # Sign out: revokes and clears the cookie; refreshing afterwards fails.
        logout = await browser.post(
            "/auth/logout", json={},
            headers={"Authorization": f"Bearer {body['accessToken']}"})
        assert logout.status_code == 200
        assert "Max-Age=0" in cookies_set(logout)["aa_refresh"]
        browser.cookies.clear()
        browser.cookies.set("aa_refresh", cookie_value(rotated), domain="127.0.0.1",
                            path="/auth")
        again = await browser.post("/auth/refresh", json={})
        assert again.status_code == 401  # the logged-out session's token was revoked


async def test_body_token_still_wins_over_the_cookie(start_app: StartApp,
                                                     oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as client:
        signed_in = await mock_sign_in(client, "erin@example.com",
                                       headers={"Accept": "application/json"})
        pair = signed_in.json()
        response = await client.post("/auth/refresh",
                                     json={"refreshToken": pair["refreshToken"]})
    assert response.status_code == 200
    assert response.json()["refreshToken"]  # API clients keep getting it in the body
    assert "aa_refresh" not in cookies_set(response)


async def test_refresh_without_cookie_or_body_is_a_clear_400(start_app: StartApp,
                                                             oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with httpx.AsyncClient(base_url=live.base_url) as client:
        response = await client.post("/auth/refresh")
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
