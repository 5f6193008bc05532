"""A tiny OpenID provider we fully control, for what oidc-provider-mock cannot do.

It speaks the real protocol (discovery, JWKS, authorize redirect, token endpoint with
authorization_code + refresh_token grants) and, unlike the mock, ENFORCES PKCE S256 and
checks the client secret. Tests then bend one thing at a time: the ID token's claims, the
key that signs it, the published key set (rotation), or the token endpoint's health.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


@dataclass
class SigningKey:
    kid: str
    private_key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def public_jwk(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.private_key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return jwk


@dataclass
class FakeIdP:
    client_id: str
    client_secret: str
    base_url: str = ""
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey("key-1")])
    # Knobs a test turns:
    signing_key: SigningKey | None = None     # sign with this key instead of keys[0]
    claim_overrides: dict[str, Any] = field(default_factory=dict)
    header_overrides: dict[str, Any] = field(default_factory=dict)
    token_mode: str = "ok"                    # ok | error500 | invalid_grant | no_id_token
    refresh_mode: str = "ok"                  # ok | invalid_grant | error500
    granted_scope: str | None = None          # None: grant what was requested
    # What happened:
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)
    jwks_requests: int = 0
    token_requests: int = 0
    last_authorize: dict[str, str] = field(default_factory=dict)

    @property
    def issuer(self) -> str:
        return self.base_url

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.base_url}/authorize",
            "token_endpoint": f"{self.base_url}/token",
            "jwks_uri": f"{self.base_url}/jwks",
            "response_types_supported": ["code"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
        }

    def id_token(self, sub: str, email: str, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.client_id, "sub": sub,
                                  "email": email, "email_verified": True, "name": "Idp User",
                                  "iat": now, "exp": now + 3600}
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.claim_overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        key = self.signing_key or self.keys[0]
        headers = {"kid": key.kid, **self.header_overrides}
        return jwt.encode(claims, key.private_key, algorithm="RS256", headers=headers)

    def authorize(self, params: dict[str, str], sub: str, email: str) -> str:
        """The provider's half of a consent: returns the redirect back to the client."""
        self.last_authorize = params
        code = secrets.token_urlsafe(24)
        self.codes[code] = {"params": params, "sub": sub, "email": email}
        query = urlencode({"code": code, "state": params.get("state", "")})
        return f"{params['redirect_uri']}?{query}"

    def token(self, form: dict[str, str], auth_header: str | None) -> tuple[int, dict[str, Any]]:
        self.token_requests += 1
        if not self._client_ok(form, auth_header):
            return 401, {"error": "invalid_client"}
        grant = form.get("grant_type")
        if grant == "refresh_token":
            return self._refresh(form)
        if grant != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        if self.token_mode == "error500":
            return 500, {"error": "server_error"}
        entry = self.codes.pop(form.get("code", ""), None)
        if entry is None or self.token_mode == "invalid_grant":
            return 400, {"error": "invalid_grant"}
        params = entry["params"]
        if form.get("redirect_uri") != params.get("redirect_uri"):
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(
            hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if params.get("code_challenge_method") != "S256" or challenge != params.get(
                "code_challenge"):
            return 400, {"error": "invalid_grant", "error_description": "PKCE failed"}
        refresh = secrets.token_urlsafe(24)
        self.refresh_tokens[refresh] = entry["sub"]
        answer: dict[str, Any] = {
            "access_token": "ya29." + secrets.token_urlsafe(24), "token_type": "Bearer",
            "expires_in": 3599, "refresh_token": refresh,
            "scope": self.granted_scope if self.granted_scope is not None
            else params.get("scope", ""),
        }
        if self.token_mode != "no_id_token":
            answer["id_token"] = self.id_token(entry["sub"], entry["email"],
                                               params.get("nonce"))
        return 200, answer

    def _refresh(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if self.refresh_mode == "error500":
            return 500, {"error": "server_error"}
        if self.refresh_mode == "invalid_grant" or form.get(
                "refresh_token") not in self.refresh_tokens:
            return 400, {"error": "invalid_grant"}
        return 200, {"access_token": "ya29.refreshed-" + secrets.token_urlsafe(12),
                     "token_type": "Bearer", "expires_in": 3599}

    def _client_ok(self, form: dict[str, str], auth_header: str | None) -> bool:
        if auth_header and auth_header.startswith("Basic "):
            client_id, _, secret = base64.b64decode(auth_header[6:]).decode().partition(":")
        else:
            client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        return client_id == self.client_id and secret == self.client_secret


def _handler(idp: FakeIdP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/.well-known/openid-configuration":
                self._json(200, idp.discovery())
            elif url.path == "/jwks":
                idp.jwks_requests += 1
                self._json(200, {"keys": [k.public_jwk() for k in idp.keys]})
            elif url.path == "/authorize":
                params = {k: v[0] for k, v in parse_qs(url.query).items()}
                self.send_response(302)
                self.send_header("Location", idp.authorize(params, "idp-sub-1",
                                                           "carol@example.com"))
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if urlparse(self.path).path == "/token":
                status, body = idp.token(form, self.headers.get("Authorization"))
                self._json(status, body)
            else:
                self._json(404, {"error": "not_found"})

    return Handler


@contextmanager
def run_fake_idp(client_id: str, client_secret: str) -> Iterator[FakeIdP]:
    idp = FakeIdP(client_id=client_id, client_secret=client_secret)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(idp))
    idp.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield idp
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
