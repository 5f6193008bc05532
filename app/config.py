"""One typed settings object, read from the environment (and an optional .env file).

`load_settings()` collects *every* problem before failing, so an operator fixes a bad
env file in one pass instead of one error per restart.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import urlsplit

AppEnv = Literal["development", "staging", "production", "test"]
APP_ENVS: tuple[str, ...] = ("development", "staging", "production", "test")
LOG_LEVELS: tuple[str, ...] = ("debug", "info", "warning", "error", "critical")
JWT_SECRET_PLACEHOLDER = "your_jwt_secret_key_here"  # noqa: S105 - rejected value
DEV_CORS_ORIGIN = "http://localhost:3000"

_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

T = TypeVar("T")


class ConfigError(Exception):
    """Raised with the full list of configuration problems."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("Invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


def parse_duration(value: str) -> int:
    """'15m' -> 900. A bare number means seconds (the seed's jsonwebtoken did the same)."""
    match = _DURATION_RE.match(value)
    if not match:
        raise ValueError(f"'{value}' is not a duration (use forms like 900, 15m, 24h, 7d)")
    amount, unit = int(match.group(1)), match.group(2) or "s"
    seconds = int(amount * _DURATION_UNITS[unit])
    if seconds <= 0:
        raise ValueError(f"'{value}' must be a positive duration")
    return seconds


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"'{value}' is not a boolean (use true/false)")


def _parse_int(value: str) -> int:
    try:
        return int(value.strip())
    except ValueError:
        raise ValueError(f"'{value}' is not an integer") from None


def _parse_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parse_networks(value: str) -> list[str]:
    networks = _parse_list(value)
    for net in networks:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"'{net}' is not an IP address or CIDR network") from None
    return networks


@dataclass(frozen=True)
class Setting:
    """Documentation and parsing of one environment variable."""

    env: str
    attr: str
    default: str | None
    description: str
    parse: Callable[[str], Any] = str
    secret: bool = False


# The single source of truth for variables: the README table and .env.example are checked
# against this list by tests, so documentation cannot drift from code.
SETTINGS: tuple[Setting, ...] = (
    Setting("APP_ENV", "app_env", "development",
            "Environment: development, staging, production or test."),
    Setting("HOST", "host", "127.0.0.1", "Address the server binds to."),
    Setting("PORT", "port", "3000", "TCP port the server listens on.", _parse_int),
    Setting("WORKERS", "workers", "1",
            "Sanic worker processes; 0 means one per CPU.", _parse_int),
    Setting("WORKER_MAX_MEMORY_MB", "worker_max_memory_mb", "0",
            "A worker whose resident memory grows past this many MiB is restarted "
            "gracefully (the others keep serving); 0 disables.", _parse_int),
    Setting("GOOGLE_CLIENT_ID", "google_client_id", None,
            "OAuth client id from the Google Cloud console (required in production; unset "
            "elsewhere: sign-in is off).", secret=False),
    Setting("GOOGLE_CLIENT_SECRET", "google_client_secret", None,
            "OAuth client secret (required in production; unset elsewhere: sign-in is off).",
            secret=True),
    Setting("GOOGLE_REDIRECT_URI", "google_redirect_uri",
            "http://localhost:3000/auth/google/callback",
            "Callback URL registered with Google."),
    Setting("GOOGLE_DISCOVERY_URL", "google_discovery_url",
            "https://accounts.google.com/.well-known/openid-configuration",
            "OIDC discovery document of the identity provider."),
    Setting("GOOGLE_TOKEN_ENCRYPTION_KEY", "google_token_encryption_key", "",
            "Comma-separated keys (32+ chars each) for stored Google tokens: the first "
            "encrypts, all decrypt (rotation: put the new key first, run `python -m app "
            "reencrypt-google-tokens`, then drop the old key); defaults to one derived from "
            "JWT_SECRET outside production.", secret=True),
    Setting("GMAIL_API_BASE_URL", "gmail_api_base_url", "https://gmail.googleapis.com",
            "Base URL of the Gmail REST API."),
    Setting("OPENAI_API_KEY", "openai_api_key", None,
            "OpenAI API key, starts with sk- (required in production; unset elsewhere: the "
            "assistant is off).", secret=True),
    Setting("OPENAI_MODEL", "openai_model", "gpt-4o-mini", "Chat model name."),
    Setting("OPENAI_BASE_URL", "openai_base_url", "https://api.openai.com/v1",
            "Base URL of the OpenAI-compatible API."),
    Setting("OPENAI_TIMEOUT", "openai_timeout", "60s",
            "Timeout of one model call (duration).", parse_duration),
    Setting("OPENAI_MAX_RETRIES", "openai_max_retries", "2",
            "Retries of a failed model call.", _parse_int),
    Setting("JWT_SECRET", "jwt_secret", None,
            "HMAC secret for access/refresh tokens, 32+ chars (required).", secret=True),
    Setting("JWT_EXPIRES_IN", "jwt_expires_in", "15m",
            "Access token lifetime (e.g. 15m); keep it short, the page renews it with the "
            "refresh cookie.", parse_duration),
    Setting("JWT_REFRESH_EXPIRES_IN", "jwt_refresh_expires_in", "7d",
            "Refresh token lifetime (must not be shorter than JWT_EXPIRES_IN).",
            parse_duration),
    Setting("REFRESH_REUSE_GRACE_SECONDS", "refresh_reuse_grace_seconds", "10",
            "A second refresh with the same token within this many seconds (two tabs, a "
            "retry) gets the same successor instead of revoking the session; 0 disables.",
            _parse_int),
    Setting("DATABASE_URL", "database_url", "postgres://assistantapp@localhost:5432/assistantapp",
            "PostgreSQL URL, postgres://user:pass@host:port/db (required in production).",
            secret=True),
    Setting("REDIS_URL", "redis_url", "redis://localhost:6379/0",
            "Redis URL for rate limits, OAuth state and metrics.", secret=True),
    Setting("LOG_LEVEL", "log_level", "info", "debug, info, warning, error or critical."),
    Setting("LOG_FILE_PATH", "log_file_path", "",
            "Also write JSON logs to this file (empty: stdout only)."),
    Setting("CORS_ORIGIN", "cors_origin", DEV_CORS_ORIGIN,
            "Comma-separated list of allowed browser origins.", _parse_list),
    Setting("TRUSTED_PROXIES", "trusted_proxies", "127.0.0.1/32,::1/128",
            "Comma-separated addresses/CIDRs whose X-Forwarded-For is believed.",
            _parse_networks),
    Setting("RATE_LIMIT_WINDOW_MS", "rate_limit_window_ms", "900000",
            "Rate-limit window in milliseconds.", _parse_int),
    Setting("RATE_LIMIT_MAX_REQUESTS", "rate_limit_max_requests", "100",
            "Requests allowed per client IP per window.", _parse_int),
    Setting("ASSISTANT_QUOTA_MAX_CALLS", "assistant_quota_max_calls", "60",
            "Messages (model calls) one user may send per quota window; 0 disables.",
            _parse_int),
    Setting("ASSISTANT_QUOTA_WINDOW", "assistant_quota_window", "1h",
            "Window of the per-user message quota (duration).", parse_duration),
    Setting("HEALTH_CHECK_INTERVAL", "health_check_interval", "30000",
            "Milliseconds between background checks of external services.", _parse_int),
    Setting("METRICS_ENABLED", "metrics_enabled", "true",
            "Serve Prometheus metrics at /metrics.", _parse_bool),
    Setting("METRICS_ALLOWED_CIDRS", "metrics_allowed_cidrs", "127.0.0.0/8,::1/128",
            "Client networks allowed to read /metrics.", _parse_networks),
    Setting("REQUEST_MAX_SIZE", "request_max_size", "1048576",
            "Largest accepted request body in bytes.", _parse_int),
)


@dataclass(frozen=True)
class Settings:
    app_env: AppEnv = "development"
    host: str = "127.0.0.1"
    port: int = 3000
    workers: int = 1
    worker_max_memory_mb: int = 0
    google_client_id: str = ""
    google_client_secret: str = ""
    google_redirect_uri: str = "http://localhost:3000/auth/google/callback"
    google_discovery_url: str = "https://accounts.google.com/.well-known/openid-configuration"
    google_token_encryption_key: str = ""
    gmail_api_base_url: str = "https://gmail.googleapis.com"
    openai_api_key: str = ""
    openai_model: str = "gpt-4o-mini"
    openai_base_url: str = "https://api.openai.com/v1"
    openai_timeout: int = 60
    openai_max_retries: int = 2
    jwt_secret: str = ""
    jwt_expires_in: int = 900
    jwt_refresh_expires_in: int = 604800
    refresh_reuse_grace_seconds: int = 10
    database_url: str = "postgres://assistantapp@localhost:5432/assistantapp"
    redis_url: str = "redis://localhost:6379/0"
    log_level: str = "info"
    log_file_path: str = ""
    cors_origin: list[str] = field(default_factory=lambda: [DEV_CORS_ORIGIN])
    trusted_proxies: list[str] = field(default_factory=lambda: ["127.0.0.1/32", "::1/128"])
    rate_limit_window_ms: int = 900000
    rate_limit_max_requests: int = 100
    assistant_quota_max_calls: int = 60
    assistant_quota_window: int = 3600
    health_check_interval: int = 30000
    metrics_enabled: bool = True
    metrics_allowed_cidrs: list[str] = field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    request_max_size: int = 1048576
    # Variables that were explicitly set, so the validator can tell "missing" from "default".
    provided: frozenset[str] = frozenset()

    @property
    def is_production(self) -> bool:
        return self.app_env == "production"

    @property
    def openai_configured(self) -> bool:
        return bool(self.openai_api_key)

    @property
    def google_configured(self) -> bool:
        return bool(self.google_client_id and self.google_client_secret)

    def features(self) -> dict[str, dict[str, Any]]:
        """Which features are on, and what turns an off one on (for the page and /health)."""
        enabled = {"signIn": self.google_configured, "assistant": self.openai_configured}
        return {name: {"enabled": on, "enableWith": [] if on else FEATURE_VARIABLES[name]}
                for name, on in enabled.items()}

    def redacted(self) -> dict[str, Any]:
        """Settings as a dict with secrets masked, safe for logs and /health."""
        secret_attrs = {s.attr for s in SETTINGS if s.secret}
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "provided":
                continue
            value = getattr(self, f.name)
            out[f.name] = "***" if f.name in secret_attrs and value else value
        return out


def read_env_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Parse a dotenv file: KEY=VALUE lines, optional quotes, # comments, 'export ' prefix."""
    values: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
) -> Settings:
    """Build Settings from the environment, raising ConfigError with every problem found.

    Values in the process environment win over the env file, as with docker/systemd.
    """
    source: dict[str, str] = {}
    errors: list[str] = []
    if env_file is not None and Path(env_file).is_file():
        try:
            source.update(read_env_file(env_file))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"Cannot read env file {env_file}: {exc}")
    source.update(os.environ if environ is None else environ)

    values: dict[str, Any] = {}
    provided: set[str] = set()
    for setting in SETTINGS:
        raw = source.get(setting.env)
        if raw is not None and raw.strip() != "":
            provided.add(setting.env)
        elif setting.default is None:
            continue
        else:
            raw = setting.default
        try:
            values[setting.attr] = setting.parse(raw.strip())
        except ValueError as exc:
            errors.append(f"{setting.env}: {exc}")
    values["provided"] = frozenset(provided)

    errors.extend(_validate(values, provided))
    if errors:
        raise ConfigError(errors)
    return Settings(**values)


# What turns each optional feature on (outside production, where all are required).
FEATURE_VARIABLES: dict[str, list[str]] = {
    "signIn": ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET"],
    "assistant": ["OPENAI_API_KEY"],
}

PLACEHOLDER_PATTERN = re.compile(r"\bchange[-_ ]?me\b", re.IGNORECASE)


def _validate(values: dict[str, Any], provided: set[str]) -> list[str]:
    errors: list[str] = []
    app_env = values.get("app_env", "development")
    if app_env not in APP_ENVS:
        errors.append(f"APP_ENV: '{app_env}' must be one of {', '.join(APP_ENVS)}")
    production = app_env == "production"

    # Production needs every feature. Elsewhere (a local deploy, development, staging
    # without keys) Google sign-in and the assistant may be left unset: they are then off,
    # and /api/features, /health and the page say which variables turn them on.
    required = ["JWT_SECRET"]
    if production:
        required[:0] = FEATURE_VARIABLES["signIn"] + FEATURE_VARIABLES["assistant"]
    for name in required:
        if name not in provided:
            errors.append(f"Required environment variable {name} is not set"
                          + ("" if name == "JWT_SECRET" else " (required in production)"))
    google_given = [name for name in FEATURE_VARIABLES["signIn"] if name in provided]
    if len(google_given) == 1:
        missing = next(n for n in FEATURE_VARIABLES["signIn"] if n not in provided)
        errors.append(f"{google_given[0]} is set but {missing} is not: set both (Google "
                      "sign-in on) or neither (sign-in off)")

    for name, attr in (("GOOGLE_CLIENT_ID", "google_client_id"),
                       ("GOOGLE_CLIENT_SECRET", "google_client_secret")):
        value = values.get(attr, "")
        if name in provided and len(value) < 20:
            errors.append(f"{name} appears to be invalid (too short)")

    key = values.get("openai_api_key", "")
    if "OPENAI_API_KEY" in provided and not key.startswith("sk-"):
        errors.append("OPENAI_API_KEY appears to be invalid (must start with 'sk-')")

    secret = values.get("jwt_secret", "")
    if "JWT_SECRET" in provided:
        if secret == JWT_SECRET_PLACEHOLDER:
            errors.append("JWT_SECRET must be changed from the placeholder value")
        elif len(secret) < 32:
            errors.append("JWT_SECRET must be at least 32 characters long")

    enc_keys = _parse_list(values.get("google_token_encryption_key", ""))
    if "GOOGLE_TOKEN_ENCRYPTION_KEY" in provided and (
            not enc_keys or any(len(k) < 32 for k in enc_keys)):
        # (each key of the comma-separated list)
        errors.append("GOOGLE_TOKEN_ENCRYPTION_KEY must be at least 32 characters long")
    if production and "GOOGLE_TOKEN_ENCRYPTION_KEY" not in provided:
        errors.append("Required environment variable GOOGLE_TOKEN_ENCRYPTION_KEY is not set "
                      "(required in production)")

    _positive(values, errors, "PORT", "port", maximum=65535)
    _positive(values, errors, "RATE_LIMIT_WINDOW_MS", "rate_limit_window_ms")
    _positive(values, errors, "RATE_LIMIT_MAX_REQUESTS", "rate_limit_max_requests")
    _positive(values, errors, "HEALTH_CHECK_INTERVAL", "health_check_interval")
    _positive(values, errors, "REQUEST_MAX_SIZE", "request_max_size")
    if values.get("workers", 0) < 0:
        errors.append("WORKERS: must be 0 (one per CPU) or a positive number")
    if values.get("refresh_reuse_grace_seconds", 0) < 0:
        errors.append("REFRESH_REUSE_GRACE_SECONDS: must not be negative")
    if values.get("assistant_quota_max_calls", 0) < 0:
        errors.append("ASSISTANT_QUOTA_MAX_CALLS: must be 0 (no quota) or a positive number")
    if values.get("openai_max_retries", 0) < 0:
        errors.append("OPENAI_MAX_RETRIES: must not be negative")

    level = str(values.get("log_level", "info")).lower()
    if level == "warn":
        values["log_level"] = level = "warning"
    if level not in LOG_LEVELS:
        errors.append(f"LOG_LEVEL: '{level}' must be one of {', '.join(LOG_LEVELS)}")
    else:
        values["log_level"] = level

    for name, attr, schemes in (
        ("DATABASE_URL", "database_url", ("postgres", "postgresql", "asyncpg")),
        ("REDIS_URL", "redis_url", ("redis", "rediss", "unix")),
    ):
        url = str(values.get(attr, ""))
        if url and url.split("://", 1)[0] not in schemes:
            errors.append(f"{name}: '{_url_origin(url)}' must start with "
                          + " or ".join(f"{s}://" for s in schemes))
    for name, attr in (("GOOGLE_REDIRECT_URI", "google_redirect_uri"),
                       ("GOOGLE_DISCOVERY_URL", "google_discovery_url"),
                       ("GMAIL_API_BASE_URL", "gmail_api_base_url"),
                       ("OPENAI_BASE_URL", "openai_base_url")):
        url = str(values.get(attr, ""))
        if not re.match(r"^https?://[^/\s]+", url):
            errors.append(f"{name}: '{_url_origin(url)}' must be an http(s) URL")
    for origin in values.get("cors_origin", []):
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            errors.append(f"CORS_ORIGIN: '{origin}' must be an origin like https://example.com")

    if production:
        if DEV_CORS_ORIGIN in values.get("cors_origin", []):
            errors.append(f"CORS_ORIGIN must not be {DEV_CORS_ORIGIN} in production")
        if "*" in values.get("cors_origin", []):
            errors.append("CORS_ORIGIN must not be * in production")
        if "DATABASE_URL" not in provided:
            errors.append("Required environment variable DATABASE_URL is not set "
                          "(required in production)")
        if level == "debug":
            errors.append("LOG_LEVEL must not be debug in production")
        for name, attr in (("TRUSTED_PROXIES", "trusted_proxies"),
                           ("METRICS_ALLOWED_CIDRS", "metrics_allowed_cidrs")):
            for net in values.get(attr, []):
                if ipaddress.ip_network(net, strict=False).prefixlen == 0:
                    errors.append(f"{name} must not contain {net} (every address) in "
                                  "production")
        for name, attr in (("GOOGLE_DISCOVERY_URL", "google_discovery_url"),
                           ("GOOGLE_REDIRECT_URI", "google_redirect_uri")):
            url = str(values.get(attr, ""))
            if url.startswith("http://"):
                errors.append(f"{name}: '{_url_origin(url)}' must use https:// in production")
        host = _url_host(str(values.get("google_redirect_uri", "")))
        if host in ("localhost", "127.0.0.1", "::1") or host.endswith(".localhost"):
            errors.append(f"GOOGLE_REDIRECT_URI: '{_url_origin(values['google_redirect_uri'])}'"
                          " must not point to localhost in production")
    access, refresh = values.get("jwt_expires_in"), values.get("jwt_refresh_expires_in")
    if access is not None and refresh is not None and access > refresh:
        errors.append("JWT_EXPIRES_IN must not be longer than JWT_REFRESH_EXPIRES_IN")
    if values.get("worker_max_memory_mb", 0) < 0:
        errors.append("WORKER_MAX_MEMORY_MB must be 0 (off) or a number of MiB")
    # The inventories' vault examples mark every value to fill in with CHANGE-ME: a copied
    # example must not pass (a placeholder may be long enough and start with sk-).
    for setting in SETTINGS:
        if ((setting.secret or setting.env == "GOOGLE_CLIENT_ID") and setting.env in provided
                and PLACEHOLDER_PATTERN.search(str(values.get(setting.attr, "")))):
            errors.append(f"{setting.env} is still the example's placeholder (CHANGE-ME): "
                          "set the real value")
    return errors


def _positive(values: dict[str, Any], errors: list[str], name: str, attr: str,
              maximum: int | None = None) -> None:
    value = values.get(attr)
    if value is None:
        return
    if value <= 0:
        errors.append(f"{name}: must be a positive number, got {value}")
    elif maximum is not None and value > maximum:
        errors.append(f"{name}: must be at most {maximum}, got {value}")


def _url_host(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


def _url_origin(url: str) -> str:
    """Scheme and host of a URL for error messages: never its credentials, path or query
    (a malformed URL may carry a password anywhere)."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
    except ValueError:
        return "<unparsable URL>"
    if not parts.scheme:
        return "<not a URL>"
    if not host:
        return f"{parts.scheme}://"
    return f"{parts.scheme}://{host}"


def settings_from(app_config: Any) -> Settings:
    """The Settings object stored on a Sanic app's config (see app.factory)."""
    return cast(Settings, app_config.SETTINGS)
