"""Sign in with Google: OpenID Connect authorization-code flow with PKCE (authlib).

GET /auth/google             -> 302 to the provider, state/nonce/PKCE verifier kept in Redis
                                and bound to this browser by an HttpOnly cookie
GET /auth/google/callback    -> state checked (single use), code exchanged with the verifier,
                                ID token verified (JWKS signature, iss, aud, exp, nonce), user
                                created or updated, Google tokens stored encrypted, our tokens
                                issued; the browser returns to the web page

The web page never sees a token in a URL: the refresh token travels in an HttpOnly
SameSite=Strict cookie scoped to /auth, and the page trades it for an access token with
POST /auth/refresh. Every failure is a clear page (or JSON for API clients), never a 500
and never a session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import json
import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from authlib.integrations.httpx_client._compat import httpx2
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from redis.exceptions import RedisError
from sanic import Blueprint, Request, Sanic
from sanic.response import HTTPResponse, redirect
from sanic.response import html as html_response
from sanic.response import json as json_response
from sanic_ext.extensions.openapi import openapi
from tortoise.exceptions import BaseORMException, IntegrityError

from app.auth.google_tokens import (
    GMAIL_COMPOSE_SCOPE,
    GMAIL_READONLY_SCOPE,
    GoogleNotConnected,
    GoogleTokenRefreshFailed,
    parse_scopes,
    store_google_tokens,
)
from app.config import Settings
from app.errors import json_error
from app.http import httpx2_tls_context, httpx_tls_context

log = logging.getLogger(__name__)

GOOGLE_SCOPES: tuple[str, ...] = ("openid", "email", "profile",
                                  GMAIL_READONLY_SCOPE, GMAIL_COMPOSE_SCOPE)
STATE_TTL_SECONDS = 600
STATE_KEY_PREFIX = "oauth:google:state:"
STATE_COOKIE = "aa_oauth_binding"
STATE_COOKIE_PATH = "/auth/google"
REFRESH_COOKIE = "aa_refresh"
REFRESH_COOKIE_PATH = "/auth"
SIGNED_IN_REDIRECT = "/#signed-in"
# Asymmetric algorithms only: an ID token "signed" with HS256 (keyed with our public client
# secret knowledge) or "none" must never verify.
ID_TOKEN_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
                                 "ES256", "ES384", "ES512"})
CLOCK_SKEW_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0


class GoogleAuthError(Exception):
    """A sign-in failure with the status, stable code and message the user is shown."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


SIGN_IN_OFF_MESSAGE = ("Google sign-in is off on this server. Its operator turns it on by "
                       "setting GOOGLE_CLIENT_ID and GOOGLE_CLIENT_SECRET.")


def provider_unavailable(detail: str) -> GoogleAuthError:
    log.warning("identity provider unavailable: %s", detail)
    return GoogleAuthError(502, "google_unavailable",
                           "Google sign-in is unavailable right now. Please try again later.")


def id_token_invalid(detail: str) -> GoogleAuthError:
    log.warning("rejected ID token: %s", detail)
    return GoogleAuthError(401, "google_id_token_invalid",
                           "Google's answer could not be verified, so you were not signed in.")


class OIDCProvider:
    """The identity provider found by discovery, with its metadata and keys cached.

    One per worker process (app.ctx.google_oidc). The JWKS is re-fetched when a token
    names a key id we do not know (key rotation), at most once per JWKS_REFETCH_INTERVAL
    so that forged tokens with random key ids cannot make us hammer the provider.
    """

    METADATA_TTL = 3600.0
    JWKS_TTL = 3600.0
    JWKS_REFETCH_INTERVAL = 30.0

    def __init__(self, settings: Settings, http: httpx.AsyncClient) -> None:
        self.settings = settings
        self.http = http
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: list[jwt.PyJWK] = []
        self._jwks_at = 0.0
        # Two locks: fetching the JWKS needs the metadata, and asyncio locks do not nest.
        self._metadata_lock = asyncio.Lock()
        self._jwks_lock = asyncio.Lock()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self.http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            data = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise provider_unavailable(f"GET {url}: {exc!r}") from None
        if not isinstance(data, dict):
            raise provider_unavailable(f"GET {url}: not a JSON object")
        return data

    async def metadata(self) -> dict[str, Any]:
        if self._metadata and time.monotonic() - self._metadata_at < self.METADATA_TTL:
            return self._metadata
        async with self._metadata_lock:
            if self._metadata and time.monotonic() - self._metadata_at < self.METADATA_TTL:
                return self._metadata
            data = await self._get_json(self.settings.google_discovery_url)
            for name in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(data.get(name), str) or not data[name]:
                    raise provider_unavailable(f"discovery document lacks {name}")
            self._metadata, self._metadata_at = data, time.monotonic()
            return data

    async def _fetch_jwks(self) -> None:
        meta = await self.metadata()
        data = await self._get_json(meta["jwks_uri"])
        keys: list[jwt.PyJWK] = []
        for entry in data.get("keys", []) if isinstance(data.get("keys"), list) else []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue  # encryption keys never verify signatures
            try:
                keys.append(jwt.PyJWK(entry))
            except (jwt.PyJWKError, jwt.InvalidKeyError, TypeError, ValueError):
                continue  # keys of types we cannot use (or broken ones) are skipped
        self._jwks, self._jwks_at = keys, time.monotonic()

    async def signing_keys(self, kid: str | None) -> list[jwt.PyJWK]:
        now = time.monotonic()
        if not self._jwks or now - self._jwks_at >= self.JWKS_TTL:
            async with self._jwks_lock:
                if not self._jwks or time.monotonic() - self._jwks_at >= self.JWKS_TTL:
                    await self._fetch_jwks()
        matching = [k for k in self._jwks if kid is None or k.key_id == kid]
        if not matching and kid is not None:
            async with self._jwks_lock:
                if time.monotonic() - self._jwks_at >= self.JWKS_REFETCH_INTERVAL:
                    await self._fetch_jwks()
            matching = [k for k in self._jwks if k.key_id == kid]
        return matching

    async def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Claims of a verified ID token; GoogleAuthError(401) when anything is off."""
        meta = await self.metadata()
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise id_token_invalid(f"malformed: {exc}") from None
        alg = header.get("alg")
        offered = meta.get("id_token_signing_alg_values_supported") or ["RS256"]
        if alg not in ID_TOKEN_ALGORITHMS or alg not in offered:
            raise id_token_invalid(f"algorithm {alg!r} not accepted")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        keys = await self.signing_keys(kid)
        if not keys:
            raise id_token_invalid(f"no provider key with kid {kid!r}")

        claims: dict[str, Any] | None = None
        last_error: Exception | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    id_token, key.key, algorithms=[alg],
                    audience=self.settings.google_client_id, issuer=meta["issuer"],
                    leeway=CLOCK_SKEW_SECONDS,
                    options={"require": ["exp", "iat", "iss", "aud", "sub"]})
                break
            except jwt.InvalidSignatureError as exc:
                last_error = exc  # without a kid, try the next key of the set
            except jwt.PyJWTError as exc:
                raise id_token_invalid(str(exc)) from None
        if claims is None:
            raise id_token_invalid(f"signature: {last_error}")

        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.settings.google_client_id:
            raise id_token_invalid("several audiences and azp is not our client id")
        token_nonce = claims.get("nonce")
        if not isinstance(token_nonce, str) or not hmac.compare_digest(token_nonce, nonce):
            raise id_token_invalid("nonce does not match the one we sent")
        return claims

    def oauth_client(self) -> AsyncOAuth2Client:
        # A client per exchange: authlib keeps the last token on the client object, which
        # must never be shared between users. The TLS context is shared (app/http.py): loading
        # the CA bundle for every client would add tens of milliseconds to each sign-in.
        return AsyncOAuth2Client(
            client_id=self.settings.google_client_id,
            client_secret=self.settings.google_client_secret,
            redirect_uri=self.settings.google_redirect_uri,
            scope=" ".join(GOOGLE_SCOPES),
            code_challenge_method="S256",
            timeout=HTTP_TIMEOUT_SECONDS,
            verify=httpx2_tls_context(),
        )

    async def authorization_url(self, state: str, nonce: str, code_verifier: str) -> str:
        meta = await self.metadata()
        # The same URL authlib's client.create_authorization_url builds, without creating
        # an HTTP client for a request that sends nothing.
        return str(prepare_grant_uri(
            meta["authorization_endpoint"], client_id=self.settings.google_client_id,
            response_type="code", redirect_uri=self.settings.google_redirect_uri,
            scope=" ".join(GOOGLE_SCOPES), state=state, nonce=nonce,
            code_challenge=create_s256_code_challenge(code_verifier),
            code_challenge_method="S256", access_type="offline", prompt="consent",
            include_granted_scopes="true"))

    async def exchange_code(self, code: str, code_verifier: str) -> dict[str, Any]:
        meta = await self.metadata()
        async with self.oauth_client() as client:
            try:
                token = await client.fetch_token(
                    meta["token_endpoint"], grant_type="authorization_code", code=code,
                    code_verifier=code_verifier,
                    redirect_uri=self.settings.google_redirect_uri)
            except OAuthError as exc:
                log.warning("code exchange refused: %s", exc.error)
                raise GoogleAuthError(
                    400, "google_code_rejected",
                    "Google did not accept this sign-in (it may have expired). "
                    "Please sign in again.") from None
            except (httpx2.HTTPError, ValueError) as exc:
                raise provider_unavailable(f"token endpoint: {exc!r}") from None
        return dict(token)

    async def refresh_access_token(self, refresh_token: str) -> dict[str, Any]:
        """A fresh access token for a stored refresh token (used by google_tokens)."""
        try:
            meta = await self.metadata()
        except GoogleAuthError as exc:
            raise GoogleTokenRefreshFailed(exc.message) from None
        async with self.oauth_client() as client:
            client.scope = None  # a refresh keeps the granted scopes; do not re-request
            try:
                token = await client.refresh_token(meta["token_endpoint"],
                                                   refresh_token=refresh_token)
            except OAuthError as exc:
                if exc.error in ("invalid_grant", "unauthorized_client", "invalid_client"):
                    raise GoogleNotConnected(
                        "Google access was revoked or expired; sign in with Google again"
                    ) from None
                raise GoogleTokenRefreshFailed(
                    f"Google refused to refresh access ({exc.error})") from None
            except (httpx2.HTTPError, ValueError) as exc:
                log.warning("token refresh failed: %r", exc)
                raise GoogleTokenRefreshFailed(
                    "Google could not be reached to refresh access; try again later") from None
        if not isinstance(token.get("access_token"), str):
            raise GoogleTokenRefreshFailed("Google's token answer had no access token")
        return dict(token)


def _binding_hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _secure_cookies(settings: Settings) -> bool:
    # Plain-http loopback in development and tests; everywhere else only over TLS.
    return settings.app_env not in ("development", "test")


def set_refresh_cookie(response: HTTPResponse, refresh_token: str, settings: Settings) -> None:
    """Deliver our refresh token to the browser where scripts cannot read it."""
    response.add_cookie(REFRESH_COOKIE, refresh_token, path=REFRESH_COOKIE_PATH,
                        httponly=True, samesite="Strict", secure=_secure_cookies(settings),
                        max_age=settings.jwt_refresh_expires_in)


def clear_refresh_cookie(response: HTTPResponse) -> None:
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH)


def refresh_token_from_cookie(request: Request) -> str | None:
    value = request.cookies.get(REFRESH_COOKIE)
    return value or None


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


_ERROR_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sign-in failed - Assistant</title>
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
<link rel="stylesheet" href="/static/app.css">
</head>
<body class="error-page">
<main class="card">
<h1>{title}</h1>
<p class="error-message" data-code="{code}">{message}</p>
<p><a class="button" href="/auth/google">Try again</a> <a href="/">Back to the assistant</a></p>
</main>
</body>
</html>
"""


def error_response(request: Request, error: GoogleAuthError) -> HTTPResponse:
    if _wants_json(request):
        response = json_error(error.status, error.message, error.code)
    else:
        title = ("Sign-in cancelled" if error.code == "google_access_denied"
                 else "Sign-in failed")
        response = html_response(_ERROR_PAGE.format(
            title=html.escape(title), code=html.escape(error.code),
            message=html.escape(error.message)), status=error.status)
    response.headers["Cache-Control"] = "no-store"
    response.delete_cookie(STATE_COOKIE, path=STATE_COOKIE_PATH)
    return response


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.config.SETTINGS
    return settings


def _provider(request: Request) -> OIDCProvider:
    provider: OIDCProvider = request.app.ctx.google_oidc
    return provider


async def _save_state(request: Request, state: str, record: dict[str, str]) -> None:
    try:
        await request.app.ctx.redis.set(STATE_KEY_PREFIX + state, json.dumps(record),
                                        ex=STATE_TTL_SECONDS)
    except (RedisError, OSError) as exc:
        log.warning("cannot store OAuth state: %r", exc)
        raise GoogleAuthError(503, "state_store_unavailable",
                              "Sign-in is temporarily unavailable. Please try again.") from None


async def _take_state(request: Request, state: str) -> dict[str, str] | None:
    """Fetch and delete in one step, so a state can be used once only."""
    try:
        raw = await request.app.ctx.redis.getdel(STATE_KEY_PREFIX + state)
    except (RedisError, OSError) as exc:
        log.warning("cannot read OAuth state: %r", exc)
        raise GoogleAuthError(503, "state_store_unavailable",
                              "Sign-in is temporarily unavailable. Please try again.") from None
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _check_configured(settings: Settings) -> None:
    if not settings.google_configured:
        raise GoogleAuthError(503, "google_not_configured", SIGN_IN_OFF_MESSAGE)


async def start_sign_in(request: Request) -> HTTPResponse:
    settings = _settings(request)
    try:
        _check_configured(settings)
        state = generate_token(43)
        nonce = generate_token(43)
        # RFC 7636: 43-128 characters from the unreserved set; generate_token's alphabet
        # (letters and digits) is a subset.
        code_verifier = generate_token(64)
        binding = secrets.token_urlsafe(32)
        url = await _provider(request).authorization_url(state, nonce, code_verifier)
        await _save_state(request, state, {"binding": _binding_hash(binding), "nonce": nonce,
                                           "code_verifier": code_verifier})
    except GoogleAuthError as error:
        return error_response(request, error)
    response = redirect(url)
    response.headers["Cache-Control"] = "no-store"
    response.add_cookie(STATE_COOKIE, binding, path=STATE_COOKIE_PATH, httponly=True,
                        samesite="Lax", secure=_secure_cookies(settings),
                        max_age=STATE_TTL_SECONDS)
    return response


async def _validated_callback(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """Everything the callback checks before it touches the database: (token, claims)."""
    settings = _settings(request)
    _check_configured(settings)
    args = request.args
    state = args.get("state")
    if args.get("error"):
        if state:
            await _take_state(request, state)  # a cancelled attempt cannot be resumed
        if args.get("error") == "access_denied":
            raise GoogleAuthError(403, "google_access_denied",
                                  "You cancelled signing in with Google, so you are not "
                                  "signed in.")
        raise GoogleAuthError(400, "google_auth_error",
                              "Google could not complete the sign-in "
                              f"({args.get('error', '')[:64]}).")
    code = args.get("code")
    if not state or not code:
        raise GoogleAuthError(400, "oauth_request_invalid",
                              "This sign-in link is incomplete. Please start again.")
    record = await _take_state(request, state)
    cookie = request.cookies.get(STATE_COOKIE)
    if (record is None or not cookie
            or not hmac.compare_digest(_binding_hash(cookie), str(record.get("binding", "")))):
        raise GoogleAuthError(400, "oauth_state_invalid",
                              "This sign-in attempt expired, was already used or was started "
                              "in another browser. Please sign in again.")
    provider = _provider(request)
    token = await provider.exchange_code(code, str(record["code_verifier"]))
    id_token = token.get("id_token")
    if not isinstance(id_token, str):
        raise id_token_invalid("token response has no id_token")
    claims = await provider.verify_id_token(id_token, str(record["nonce"]))
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise GoogleAuthError(403, "google_email_missing",
                              "Google did not share your email address, which is needed "
                              "to sign in.")
    if claims.get("email_verified") is not True:
        # Missing, "true" or 1 is not proof: the address links accounts (upsert_google_user).
        raise GoogleAuthError(403, "google_email_unverified",
                              "Your Google email address is not verified.")
    if not token.get("scope"):
        # RFC 6749 5.1: scope may be omitted when it equals the request.
        token["scope"] = " ".join(GOOGLE_SCOPES)
    return token, claims


async def upsert_google_user(token: dict[str, Any], claims: dict[str, Any],
                             settings: Settings) -> Any:
    from app.db.models import User

    sub = str(claims["sub"])
    email = str(claims["email"]).strip().lower()
    for attempt in range(2):
        user = await User.get_or_none(google_sub=sub)
        if user is None:
            # A user created without Google (admin tools, tests) is linked by their
            # provider-verified email address, once.
            user = await User.get_or_none(email=email)
            if user is not None and user.google_sub not in (None, sub):
                # The address now belongs to a different Google account (e.g. a deleted and
                # re-created one): never hand it the old account's conversations.
                raise GoogleAuthError(409, "google_account_mismatch",
                                      "This email address is linked to a different Google "
                                      "account. Please contact support.")
        if user is None:
            user = User(email=email)
        user.google_sub = sub
        user.email = email
        if isinstance(claims.get("name"), str):
            user.name = claims["name"][:255]
        if isinstance(claims.get("picture"), str):
            user.picture = claims["picture"][:2048]
        store_google_tokens(user, token, settings)
        if "last_login_at" in User._meta.fields_map:
            user.last_login_at = datetime.now(UTC)
        try:
            await user.save()
            return user
        except IntegrityError:
            if attempt:
                raise
            # Two first sign-ins of the same person raced; the other one created the row.
            continue
    raise AssertionError("unreachable")


async def finish_sign_in(request: Request) -> HTTPResponse:
    from app.auth.tokens import issue_token_pair

    settings = _settings(request)
    try:
        token, claims = await _validated_callback(request)
        try:
            user = await upsert_google_user(token, claims, settings)
            pair = await issue_token_pair(user, settings)
        except (BaseORMException, OSError) as exc:
            log.error("sign-in could not be saved: %r", exc)
            raise GoogleAuthError(503, "database_unavailable",
                                  "Signing in is temporarily unavailable. Please try "
                                  "again.") from None
    except GoogleAuthError as error:
        return error_response(request, error)

    granted = set(parse_scopes(token.get("scope")))
    missing = sorted(set(GOOGLE_SCOPES) - granted)
    log.info("user %s signed in with Google", user.id)
    response: HTTPResponse
    if _wants_json(request):
        response = json_response({**pair, "user": {"id": user.id, "email": user.email,
                                                   "name": user.name},
                                  "grantedScopes": sorted(granted),
                                  "missingScopes": missing})
    else:
        response = redirect(SIGNED_IN_REDIRECT)
    response.headers["Cache-Control"] = "no-store"
    response.delete_cookie(STATE_COOKIE, path=STATE_COOKIE_PATH)
    set_refresh_cookie(response, str(pair["refreshToken"]), settings)
    return response


def setup_google_auth(app: Sanic, settings: Settings) -> None:
    bp = Blueprint("google_auth", url_prefix="/auth/google")

    @bp.get("", name="start")
    @openapi.tag("auth")
    @openapi.summary("Start signing in with Google")
    @openapi.description(
        "Redirects (302) to the identity provider's authorization endpoint: authorization "
        "code flow with PKCE (S256), state and nonce bound to this browser by an HttpOnly "
        "cookie. Requests the Gmail read and compose scopes for the email agent.")
    @openapi.response(302, description="Redirect to the provider")
    @openapi.response(502, description="Provider unreachable (google_unavailable)")
    @openapi.response(503, description="Sign-in is off on this server (google_not_configured)")
    async def google_start(request: Request) -> HTTPResponse:
        return await start_sign_in(request)

    @bp.get("/callback", name="callback")
    @openapi.tag("auth")
    @openapi.summary("Finish signing in with Google (the provider redirects here)")
    @openapi.description(
        "Checks the single-use state, exchanges the code with the PKCE verifier, verifies "
        "the ID token, creates or updates the user and stores their Google tokens "
        "encrypted. Browsers are redirected to `/#signed-in` with the refresh token in an "
        "HttpOnly cookie (the page calls POST /auth/refresh); clients sending "
        "`Accept: application/json` receive the token pair as JSON. Errors are an HTML "
        "page or JSON `{error, code}`.")
    @openapi.parameter("code", str, "query")
    @openapi.parameter("state", str, "query")
    @openapi.response(302, description="Signed in; back to the web page")
    @openapi.response(400, description="Missing, replayed or foreign state")
    @openapi.response(401, description="ID token failed verification")
    @openapi.response(403, description="The user denied consent")
    @openapi.response(502, description="Provider unreachable")
    async def google_callback(request: Request) -> HTTPResponse:
        return await finish_sign_in(request)

    app.blueprint(bp)

    @app.before_server_start
    async def start_oidc_client(app: Sanic) -> None:
        http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_SECONDS, follow_redirects=False,
                                 verify=httpx_tls_context())
        app.ctx.google_http = http
        app.ctx.google_oidc = OIDCProvider(settings, http)

    @app.after_server_stop
    async def stop_oidc_client(app: Sanic) -> None:
        http = getattr(app.ctx, "google_http", None)
        if http is not None:
            await http.aclose()
