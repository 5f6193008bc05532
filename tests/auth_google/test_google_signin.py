"""Sign in with Google end to end over HTTP: the app served on a loopback port with real
PostgreSQL and Redis, oidc-provider-mock as the identity provider for the browser-style
flow, and a provider we control (fake_idp) for PKCE enforcement and bad ID tokens."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import parse_qs, urlparse, urlsplit

import httpx
import pytest
import redis.asyncio as redis_asyncio

from app.auth.google import GOOGLE_SCOPES, STATE_KEY_PREFIX, OIDCProvider
from app.auth.google_tokens import (
    GMAIL_COMPOSE_SCOPE,
    GMAIL_READONLY_SCOPE,
    decrypt_token,
)
from tests.auth_google.conftest import StartApp, fake_idp_discovery
from tests.auth_google.fake_idp import FakeIdP, SigningKey
from tests.servers import free_port

DbSession = Callable[[], AbstractAsyncContextManager[None]]
JSON = {"Accept": "application/json"}


def cookies_set(response: httpx.Response) -> dict[str, str]:
    """Set-Cookie headers by cookie name (whole header value, attributes included)."""
    out = {}
    for header in response.headers.get_list("set-cookie"):
        out[header.split("=", 1)[0]] = header
    return out


async def mock_sign_in(client: httpx.AsyncClient, sub: str,
                       headers: dict[str, str] | None = None) -> httpx.Response:
    """What a browser does: start, consent at the provider (a form POST), follow back."""
    start = await client.get("/auth/google")
    assert start.status_code == 302, start.text
    if "@" in sub:
        # The mock's default user has no email_verified claim, which the app now refuses.
        provider = "{0.scheme}://{0.netloc}".format(urlsplit(start.headers["location"]))
        await set_mock_user(provider + "/.well-known/openid-configuration", sub,
                            {"email": sub})
    consent = await client.post(start.headers["location"], data={"sub": sub})
    assert consent.status_code == 302, consent.text
    return await client.get(consent.headers["location"], headers=headers or {})


async def set_mock_user(discovery_url: str, sub: str, claims: dict[str, Any]) -> None:
    base = discovery_url.split("/.well-known/")[0]
    async with httpx.AsyncClient() as client:
        # A verified address unless the test says otherwise (the app requires it).
        response = await client.put(f"{base}/users/{sub}",
                                    json={"email_verified": True, **claims})
        assert response.status_code == 204


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(
        hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


async def test_start_redirects_to_provider_with_pkce_state_and_nonce(
        start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as client:
        response = await client.get("/auth/google")
    assert response.status_code == 302
    url = urlparse(response.headers["location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == oidc_mock.replace(
        "/.well-known/openid-configuration", "/oauth2/authorize")
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == live.settings.google_client_id
    assert query["redirect_uri"] == live.settings.google_redirect_uri
    assert query["scope"].split() == list(GOOGLE_SCOPES)
    assert {GMAIL_READONLY_SCOPE, GMAIL_COMPOSE_SCOPE} <= set(query["scope"].split())
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32

    # Server-side: state -> nonce + verifier in Redis with a ~10 minute TTL.
    redis = redis_asyncio.from_url(live.settings.redis_url)
    try:
        key = STATE_KEY_PREFIX + query["state"]
        record = json.loads(await redis.get(key))
        assert 500 <= await redis.ttl(key) <= 600  # ~10 minutes (slack for a loaded CI)
    finally:
        await redis.aclose()
    assert record["nonce"] == query["nonce"]
    assert s256(record["code_verifier"]) == query["code_challenge"]
    assert 43 <= len(record["code_verifier"]) <= 128
    assert "code_verifier" not in response.headers["location"]

    cookie = cookies_set(response)["aa_oauth_binding"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Path=/auth/google" in cookie and "Secure" not in cookie  # test env is plain http
    assert record["binding"] == hashlib.sha256(
        cookie.split("=", 1)[1].split(";")[0].encode()).hexdigest()


async def test_full_flow_with_oidc_provider_mock_creates_user_and_session(
        start_app: StartApp, oidc_mock: str, db_session: DbSession) -> None:
    from app.db.models import User

    live = await start_app(oidc_mock)
    await set_mock_user(oidc_mock, "mock-sub-alice",
                        {"email": "Alice@Example.com", "name": "Alice Mock",
                         "email_verified": True})
    async with live.client() as client:
        response = await mock_sign_in(client, "mock-sub-alice")
        assert response.status_code == 302, response.text
        assert response.headers["location"] == "/#signed-in"
        assert "token" not in response.headers["location"].lower()
        cookies = cookies_set(response)
        refresh_cookie = cookies["aa_refresh"]
        assert "HttpOnly" in refresh_cookie and "SameSite=Strict" in refresh_cookie
        assert "Path=/auth" in refresh_cookie
        assert "Max-Age=0" in cookies["aa_oauth_binding"]  # the state binding is spent

    async with db_session():
        user = await User.get(email="alice@example.com")
    assert user.google_sub == "mock-sub-alice"
    assert user.name == "Alice Mock"
    # Stored encrypted: not the clear token, but decryptable with our key.
    assert user.google_access_token_enc and user.google_refresh_token_enc
    access = decrypt_token(live.settings, user.google_access_token_enc)
    assert access and access not in user.google_access_token_enc
    assert decrypt_token(live.settings, user.google_refresh_token_enc)
    assert user.google_token_expires_at is not None
    # The mock grants only standard scopes: what was granted is recorded, not requested.
    assert user.google_scopes.split() == ["email", "openid", "profile"]


async def test_json_callback_reports_scopes_and_a_second_sign_in_updates_the_user(
        start_app: StartApp, oidc_mock: str, db_session: DbSession) -> None:
    from app.db.models import User

    live = await start_app(oidc_mock)
    await set_mock_user(oidc_mock, "mock-sub-bob", {"email": "bob@example.com", "name": "Bob"})
    async with live.client() as client:
        first = await mock_sign_in(client, "mock-sub-bob", headers=JSON)
    assert first.status_code == 200
    body = first.json()
    assert body["tokenType"] == "Bearer" and body["accessToken"] and body["refreshToken"]
    assert body["user"]["email"] == "bob@example.com"
    assert set(body["missingScopes"]) == {GMAIL_READONLY_SCOPE, GMAIL_COMPOSE_SCOPE}

    await set_mock_user(oidc_mock, "mock-sub-bob", {"email": "bob@example.com",
                                                    "name": "Robert"})
    async with live.client() as client:
        second = await mock_sign_in(client, "mock-sub-bob", headers=JSON)
    assert second.status_code == 200
    assert second.json()["user"]["id"] == body["user"]["id"]
    async with db_session():
        users = await User.filter(email="bob@example.com")
    assert len(users) == 1 and users[0].name == "Robert"


async def test_replayed_state_is_refused_without_a_session(
        start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    await set_mock_user(oidc_mock, "replay@x.org", {"email": "replay@x.org"})
    async with live.client() as client:
        start = await client.get("/auth/google")
        consent = await client.post(start.headers["location"], data={"sub": "replay@x.org"})
        callback = consent.headers["location"]
        # The attacker (or a double click) replays the exact callback: the state is spent.
        binding = client.cookies.get("aa_oauth_binding")
        first = await client.get(callback)
        assert first.status_code == 302
        client.cookies.set("aa_oauth_binding", binding, domain="127.0.0.1",
                           path="/auth/google")
        replay = await client.get(callback, headers=JSON)
    assert replay.status_code == 400
    assert replay.json()["code"] == "oauth_state_invalid"
    assert "aa_refresh" not in cookies_set(replay)


async def test_state_started_in_another_browser_is_refused(
        start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as victim, live.client() as attacker:
        start = await attacker.get("/auth/google")
        consent = await attacker.post(start.headers["location"], data={"sub": "mallory@x.org"})
        # Login CSRF: the attacker's callback link opened in the victim's browser.
        response = await victim.get(consent.headers["location"])
    assert response.status_code == 400
    assert "text/html" in response.headers["content-type"]
    assert "Sign-in failed" in response.text and "oauth_state_invalid" in response.text
    assert "aa_refresh" not in cookies_set(response)


@pytest.mark.parametrize("query", ["", "?code=abc", "?state=abc", "?state=unknown&code=abc"])
async def test_missing_or_unknown_state_gives_a_clear_400(
        start_app: StartApp, oidc_mock: str, query: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as client:
        response = await client.get("/auth/google/callback" + query, headers=JSON)
    assert response.status_code == 400
    assert response.json()["code"] in ("oauth_request_invalid", "oauth_state_invalid")
    assert "aa_refresh" not in cookies_set(response)


async def test_denied_consent_at_the_provider(start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as client:
        start = await client.get("/auth/google")
        denied = await client.post(start.headers["location"], data={"action": "deny"})
        assert denied.status_code == 302
        assert "error=access_denied" in denied.headers["location"]
        page = await client.get(denied.headers["location"])
        state = parse_qs(urlparse(start.headers["location"]).query)["state"][0]
        as_json = await client.get(f"/auth/google/callback?error=access_denied&state={state}",
                                   headers=JSON)
    assert page.status_code == 403
    assert "Sign-in cancelled" in page.text and "<script" not in page.text
    assert as_json.status_code == 403 and as_json.json()["code"] == "google_access_denied"
    assert "aa_refresh" not in cookies_set(page)


async def test_other_provider_errors_are_escaped_in_the_page(
        start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock)
    async with live.client() as client:
        response = await client.get(
            "/auth/google/callback", params={"error": "<script>alert(1)</script>"})
    assert response.status_code == 400
    assert "<script>alert" not in response.text and "&lt;script&gt;" in response.text


async def test_unreachable_provider_is_a_clear_502(start_app: StartApp) -> None:
    dead = f"http://127.0.0.1:{free_port()}/.well-known/openid-configuration"
    live = await start_app(dead)
    async with live.client() as client:
        page = await client.get("/auth/google")
        api = await client.get("/auth/google", headers=JSON)
    assert page.status_code == 502 and "unavailable" in page.text
    assert api.status_code == 502 and api.json()["code"] == "google_unavailable"
    assert "aa_oauth_binding" not in cookies_set(api) or "Max-Age=0" in cookies_set(api)[
        "aa_oauth_binding"]


async def test_redis_down_gives_503_not_500(start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with live.client() as client:
        response = await client.get("/auth/google", headers=JSON)
        callback = await client.get("/auth/google/callback?state=s&code=c", headers=JSON)
    assert response.status_code == 503
    assert response.json()["code"] == "state_store_unavailable"
    assert callback.status_code == 503


async def test_not_configured_in_development(start_app: StartApp, oidc_mock: str) -> None:
    live = await start_app(oidc_mock, google_client_id="", app_env="development")
    async with live.client() as client:
        response = await client.get("/auth/google", headers=JSON)
    assert response.status_code == 503 and response.json()["code"] == "google_not_configured"


# --- A provider we control: PKCE enforced, ID token bent one way at a time -----------------


async def idp_sign_in(client: httpx.AsyncClient) -> httpx.Response:
    start = await client.get("/auth/google")
    assert start.status_code == 302, start.text
    back = await client.get(start.headers["location"])  # fake_idp consents at once
    assert back.status_code == 302
    return await client.get(back.headers["location"], headers=JSON)


async def test_pkce_verifier_is_sent_and_checked(start_app: StartApp,
                                                 fake_idp: FakeIdP) -> None:
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 200, response.text
    assert fake_idp.last_authorize["code_challenge_method"] == "S256"
    assert response.json()["user"]["email"] == "carol@example.com"
    assert response.json()["missingScopes"] == []


BAD_ID_TOKENS: dict[str, Callable[[FakeIdP], None]] = {
    "wrong audience": lambda idp: idp.claim_overrides.update(aud="someone-else"),
    "wrong issuer": lambda idp: idp.claim_overrides.update(iss="https://evil.example"),
    "wrong nonce": lambda idp: idp.claim_overrides.update(nonce="not-the-nonce"),
    "no nonce": lambda idp: idp.claim_overrides.update(nonce=None),
    "expired": lambda idp: idp.claim_overrides.update(exp=1_000_000, iat=999_000),
    "foreign key, same kid": lambda idp: setattr(idp, "signing_key", SigningKey("key-1")),
    "unknown kid": lambda idp: setattr(idp, "signing_key", SigningKey("key-x")),
    "several audiences, no azp": lambda idp: idp.claim_overrides.update(
        aud=[idp.client_id, "other"]),
    "no sub": lambda idp: idp.claim_overrides.update(sub=None),
}


@pytest.mark.parametrize("case", sorted(BAD_ID_TOKENS))
async def test_bad_id_tokens_are_rejected_without_a_session(
        start_app: StartApp, fake_idp: FakeIdP, db_session: DbSession, case: str) -> None:
    from app.db.models import User

    BAD_ID_TOKENS[case](fake_idp)
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "google_id_token_invalid"
    assert "aa_refresh" not in cookies_set(response)
    async with db_session():
        assert await User.filter(email="carol@example.com").count() == 0


async def test_tampered_id_token_payload_is_rejected(start_app: StartApp,
                                                     fake_idp: FakeIdP) -> None:
    original = fake_idp.id_token

    def tampered(sub: str, email: str, nonce: str | None) -> str:
        header, payload, signature = original(sub, email, nonce).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["email"] = "admin@example.com"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"{header}.{forged}.{signature}"

    fake_idp.id_token = tampered  # type: ignore[method-assign]
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 401


@pytest.mark.parametrize("alg", ["HS256", "none"])
async def test_symmetric_or_unsigned_id_tokens_are_rejected(
        start_app: StartApp, fake_idp: FakeIdP, alg: str) -> None:
    import jwt

    def unsigned(sub: str, email: str, nonce: str | None) -> str:
        claims = {"iss": fake_idp.issuer, "aud": fake_idp.client_id, "sub": sub,
                  "email": email, "nonce": nonce, "iat": 1, "exp": 4_000_000_000}
        key = fake_idp.client_secret if alg == "HS256" else None
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": "key-1"})

    fake_idp.id_token = unsigned  # type: ignore[method-assign]
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 401


async def test_key_rotation_refetches_jwks_once_and_caches_otherwise(
        start_app: StartApp, fake_idp: FakeIdP, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OIDCProvider, "JWKS_REFETCH_INTERVAL", 0.0)
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        assert (await idp_sign_in(client)).status_code == 200
        assert (await idp_sign_in(client)).status_code == 200
        assert fake_idp.jwks_requests == 1  # cached between sign-ins
        # The provider rotates: a new key signs, and is published.
        new_key = SigningKey("key-2")
        fake_idp.keys.append(new_key)
        fake_idp.signing_key = new_key
        assert (await idp_sign_in(client)).status_code == 200
        assert fake_idp.jwks_requests == 2  # unknown kid -> one refetch


async def test_unknown_kid_refetch_is_rate_limited(start_app: StartApp,
                                                   fake_idp: FakeIdP) -> None:
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        assert (await idp_sign_in(client)).status_code == 200
        fake_idp.signing_key = SigningKey("random-kid")
        for _ in range(3):
            assert (await idp_sign_in(client)).status_code == 401
    assert fake_idp.jwks_requests == 1  # forged kids do not make us hammer the provider


@pytest.mark.parametrize(("mode", "status", "code"), [
    ("error500", 502, "google_unavailable"),
    ("invalid_grant", 400, "google_code_rejected"),
    ("no_id_token", 401, "google_id_token_invalid"),
])
async def test_token_endpoint_failures(start_app: StartApp, fake_idp: FakeIdP,
                                       mode: str, status: int, code: str) -> None:
    fake_idp.token_mode = mode
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == status and response.json()["code"] == code


@pytest.mark.parametrize("verified", [False, None, "true", 1])
async def test_unverified_email_is_refused(start_app: StartApp, fake_idp: FakeIdP,
                                           verified: Any) -> None:
    """Only `email_verified: true` proves the address (None drops the claim)."""
    fake_idp.claim_overrides["email_verified"] = verified
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 403
    assert response.json()["code"] == "google_email_unverified"


async def test_partial_consent_records_only_granted_scopes(
        start_app: StartApp, fake_idp: FakeIdP, db_session: DbSession) -> None:
    from app.auth.google_tokens import has_gmail_access
    from app.db.models import User

    fake_idp.granted_scope = f"openid email profile {GMAIL_READONLY_SCOPE}"
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.json()["missingScopes"] == [GMAIL_COMPOSE_SCOPE]
    async with db_session():
        user = await User.get(email="carol@example.com")
    assert has_gmail_access(user) and not has_gmail_access(user, compose=True)


async def test_database_down_at_callback_is_a_clear_503_without_a_session(
        start_app: StartApp, fake_idp: FakeIdP) -> None:
    dead_db = f"postgres://assistantapp:x@127.0.0.1:{free_port()}/assistantapp"
    live = await start_app(fake_idp_discovery(fake_idp), database_url=dead_db)
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "database_unavailable"
    assert "aa_refresh" not in cookies_set(response)


async def test_existing_user_without_google_is_linked_by_email(
        start_app: StartApp, fake_idp: FakeIdP, make_user: Any, db_session: DbSession) -> None:
    from app.db.models import User

    existing = await make_user(email="carol@example.com", name="Carol Admin-made")
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 200
    assert response.json()["user"]["id"] == existing.id
    async with db_session():
        linked = await User.get(id=existing.id)
    assert linked.google_sub == "idp-sub-1"


async def test_email_of_another_google_account_is_not_taken_over(
        start_app: StartApp, fake_idp: FakeIdP, make_user: Any) -> None:
    await make_user(email="carol@example.com", google_sub="an-older-google-account")
    live = await start_app(fake_idp_discovery(fake_idp))
    async with live.client() as client:
        response = await idp_sign_in(client)
    assert response.status_code == 409
    assert response.json()["code"] == "google_account_mismatch"
    assert "aa_refresh" not in cookies_set(response)
