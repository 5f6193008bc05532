"""Every validation rule of app.config, all failures at once, and docs generated from SETTINGS."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from app.__main__ import CONFIG_TABLE_END, CONFIG_TABLE_START, config_table, env_example
from app.config import (
    JWT_SECRET_PLACEHOLDER,
    SETTINGS,
    ConfigError,
    Settings,
    load_settings,
    parse_duration,
    read_env_file,
)
from tests.conftest import VALID_ENV

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "OPENAI_API_KEY", "JWT_SECRET")


def errors_for(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(env, env_file=None)
    return info.value.errors


def env_with(**changes: str) -> dict[str, str]:
    return {**VALID_ENV, **changes}


def production_env(**changes: str) -> dict[str, str]:
    base = {"APP_ENV": "production", "CORS_ORIGIN": "https://app.example.com",
            "DATABASE_URL": "postgres://app:pw@db.example.com:5432/app",
            "GOOGLE_TOKEN_ENCRYPTION_KEY": "k" * 40, "LOG_LEVEL": "info",
            "GOOGLE_REDIRECT_URI": "https://app.example.com/auth/google/callback"}
    return env_with(**{**base, **changes})


def test_valid_environment_loads_typed_values() -> None:
    settings = load_settings(env_with(PORT="8080", JWT_EXPIRES_IN="15m",
                                      JWT_REFRESH_EXPIRES_IN="7d",
                                      CORS_ORIGIN="https://a.example, https://b.example",
                                      METRICS_ENABLED="false", RATE_LIMIT_WINDOW_MS="1000"),
                             env_file=None)
    assert isinstance(settings, Settings)
    assert settings.port == 8080
    assert settings.jwt_expires_in == 900
    assert settings.jwt_refresh_expires_in == 7 * 86400
    assert settings.cors_origin == ["https://a.example", "https://b.example"]
    assert settings.metrics_enabled is False
    assert settings.rate_limit_window_ms == 1000


def test_defaults_match_the_seed() -> None:
    settings = load_settings(dict(VALID_ENV), env_file=None)
    assert settings.openai_model == "gpt-4o-mini"
    # Short-lived access tokens (issue 10): the page renews them with the refresh cookie.
    assert settings.jwt_expires_in == 15 * 60
    assert settings.refresh_reuse_grace_seconds == 10
    assert settings.jwt_refresh_expires_in == 7 * 86400
    assert settings.rate_limit_window_ms == 900000
    assert settings.rate_limit_max_requests == 100
    assert settings.health_check_interval == 30000
    assert settings.metrics_enabled is True


def test_valid_production_environment_loads() -> None:
    settings = load_settings(production_env(), env_file=None)
    assert settings.is_production


@pytest.mark.parametrize("name", REQUIRED)
def test_each_required_variable_in_production(name: str) -> None:
    env = production_env()
    del env[name]
    suffix = "" if name == "JWT_SECRET" else " (required in production)"
    assert f"Required environment variable {name} is not set{suffix}" in errors_for(env)


@pytest.mark.parametrize("app_env", ["development", "staging", "production", "test"])
def test_required_variables_in_every_environment(app_env: str) -> None:
    errors = errors_for({"APP_ENV": app_env})
    assert "Required environment variable JWT_SECRET is not set" in errors
    for name in ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "OPENAI_API_KEY"):
        message = f"Required environment variable {name} is not set (required in production)"
        assert (message in errors) == (app_env == "production"), (name, errors)


@pytest.mark.parametrize("app_env", ["development", "staging", "test"])
def test_outside_production_sign_in_and_assistant_may_be_off(app_env: str) -> None:
    env = env_with(APP_ENV=app_env)
    for name in ("GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET", "OPENAI_API_KEY"):
        del env[name]
    settings = load_settings(env, env_file=None)
    assert not settings.google_configured and not settings.openai_configured
    assert settings.features() == {
        "signIn": {"enabled": False, "enableWith": ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET"]},
        "assistant": {"enabled": False, "enableWith": ["OPENAI_API_KEY"]},
    }
    on = load_settings(env_with(APP_ENV=app_env), env_file=None).features()
    assert on == {"signIn": {"enabled": True, "enableWith": []},
                  "assistant": {"enabled": True, "enableWith": []}}


def test_half_a_google_client_is_refused() -> None:
    env = env_with(APP_ENV="staging")
    del env["GOOGLE_CLIENT_SECRET"]
    assert ("GOOGLE_CLIENT_ID is set but GOOGLE_CLIENT_SECRET is not: set both (Google "
            "sign-in on) or neither (sign-in off)") in errors_for(env)


def test_development_runs_without_a_model_key() -> None:
    env = env_with(APP_ENV="development")
    del env["OPENAI_API_KEY"]
    settings = load_settings(env, env_file=None)
    assert not settings.openai_configured
    # A key that is given must still be valid, even in development.
    assert ("OPENAI_API_KEY appears to be invalid (must start with 'sk-')"
            in errors_for(env_with(APP_ENV="development", OPENAI_API_KEY="pk-0123456789")))


def test_blank_required_variable_counts_as_missing() -> None:
    assert ("Required environment variable JWT_SECRET is not set"
            in errors_for(env_with(JWT_SECRET="   ")))


@pytest.mark.parametrize("name", ["GOOGLE_CLIENT_ID", "GOOGLE_CLIENT_SECRET"])
def test_short_google_credentials(name: str) -> None:
    assert f"{name} appears to be invalid (too short)" in errors_for(env_with(**{name: "x" * 19}))
    load_settings(env_with(**{name: "x" * 20}), env_file=None)  # 20 is enough


def test_openai_key_must_start_with_sk() -> None:
    errors = errors_for(env_with(OPENAI_API_KEY="pk-0123456789abcdef"))
    assert "OPENAI_API_KEY appears to be invalid (must start with 'sk-')" in errors


def test_jwt_secret_minimum_length() -> None:
    assert ("JWT_SECRET must be at least 32 characters long"
            in errors_for(env_with(JWT_SECRET="s" * 31)))
    load_settings(env_with(JWT_SECRET="s" * 32), env_file=None)


def test_jwt_secret_placeholder_rejected() -> None:
    errors = errors_for(env_with(JWT_SECRET=JWT_SECRET_PLACEHOLDER))
    assert "JWT_SECRET must be changed from the placeholder value" in errors


def test_production_rejects_dev_cors_origin_even_as_default() -> None:
    env = production_env()
    del env["CORS_ORIGIN"]
    assert "CORS_ORIGIN must not be http://localhost:3000 in production" in errors_for(env)
    mixed = production_env(CORS_ORIGIN="https://app.example.com,http://localhost:3000")
    assert "CORS_ORIGIN must not be http://localhost:3000 in production" in errors_for(mixed)


def test_production_rejects_wildcard_cors() -> None:
    assert "CORS_ORIGIN must not be * in production" in errors_for(production_env(CORS_ORIGIN="*"))


def test_production_requires_database_url() -> None:
    env = production_env()
    del env["DATABASE_URL"]
    assert ("Required environment variable DATABASE_URL is not set (required in production)"
            in errors_for(env))


@pytest.mark.parametrize("level", ["debug", "DEBUG"])
def test_production_rejects_debug_logging(level: str) -> None:
    errors = errors_for(production_env(LOG_LEVEL=level))
    assert "LOG_LEVEL must not be debug in production" in errors


def test_production_requires_token_encryption_key() -> None:
    env = production_env()
    del env["GOOGLE_TOKEN_ENCRYPTION_KEY"]
    assert any(e.startswith("Required environment variable GOOGLE_TOKEN_ENCRYPTION_KEY")
               for e in errors_for(env))
    assert any(e.startswith("GOOGLE_TOKEN_ENCRYPTION_KEY must be at least 32 characters long")
               for e in errors_for(production_env(GOOGLE_TOKEN_ENCRYPTION_KEY="short")))
    assert any(e.startswith("GOOGLE_TOKEN_ENCRYPTION_KEY must be at least 32 characters long")
               for e in errors_for(production_env(
                   GOOGLE_TOKEN_ENCRYPTION_KEY="n" * 40 + ",short")))
    # A rotation: new key first, old key after; both long enough.
    assert load_settings(production_env(GOOGLE_TOKEN_ENCRYPTION_KEY="n" * 40 + "," + "o" * 40),
                         env_file=None).is_production


def test_development_allows_what_production_forbids() -> None:
    settings = load_settings(env_with(APP_ENV="development", LOG_LEVEL="debug"), env_file=None)
    assert settings.cors_origin == ["http://localhost:3000"]
    assert settings.log_level == "debug"


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("PORT", "abc", "PORT: 'abc' is not an integer"),
    ("PORT", "0", "PORT: must be a positive number, got 0"),
    ("PORT", "70000", "PORT: must be at most 65535, got 70000"),
    ("RATE_LIMIT_WINDOW_MS", "-5", "RATE_LIMIT_WINDOW_MS: must be a positive number, got -5"),
    ("RATE_LIMIT_WINDOW_MS", "15min", "RATE_LIMIT_WINDOW_MS: '15min' is not an integer"),
    ("RATE_LIMIT_MAX_REQUESTS", "0", "RATE_LIMIT_MAX_REQUESTS: must be a positive number"),
    ("HEALTH_CHECK_INTERVAL", "-1", "HEALTH_CHECK_INTERVAL: must be a positive number"),
    ("REQUEST_MAX_SIZE", "1e6", "REQUEST_MAX_SIZE: '1e6' is not an integer"),
    ("WORKERS", "-2", "WORKERS: must be 0 (one per CPU) or a positive number"),
    ("OPENAI_MAX_RETRIES", "-1", "OPENAI_MAX_RETRIES: must not be negative"),
    ("OPENAI_TIMEOUT", "soon", "OPENAI_TIMEOUT: 'soon' is not a duration"),
    ("JWT_EXPIRES_IN", "forever", "JWT_EXPIRES_IN: 'forever' is not a duration"),
    ("JWT_EXPIRES_IN", "0m", "JWT_EXPIRES_IN: '0m' must be a positive duration"),
    ("JWT_REFRESH_EXPIRES_IN", "-7d", "JWT_REFRESH_EXPIRES_IN: '-7d' is not a duration"),
    ("METRICS_ENABLED", "maybe", "METRICS_ENABLED: 'maybe' is not a boolean"),
    ("TRUSTED_PROXIES", "10.0.0.0/8,proxy", "TRUSTED_PROXIES: 'proxy' is not an IP address"),
    ("METRICS_ALLOWED_CIDRS", "300.1.1.1", "METRICS_ALLOWED_CIDRS: '300.1.1.1' is not an IP"),
    ("APP_ENV", "prod", "APP_ENV: 'prod' must be one of"),
    ("LOG_LEVEL", "verbose", "LOG_LEVEL: 'verbose' must be one of"),
    # URLs in messages: scheme and host only, never credentials, port, path or query.
    ("DATABASE_URL", "mysql://u:hunter2@db/app", "DATABASE_URL: 'mysql://db' must"),
    ("REDIS_URL", "http://:hunter2@cache:6379", "REDIS_URL: 'http://cache' must"),
    ("OPENAI_BASE_URL", "ftp://models", "OPENAI_BASE_URL: 'ftp://models' must be an http(s)"),
    ("GOOGLE_REDIRECT_URI", "/callback", "GOOGLE_REDIRECT_URI: '<not a URL>' must be an http("),
    ("CORS_ORIGIN", "example.com", "CORS_ORIGIN: 'example.com' must be an origin"),
    ("CORS_ORIGIN", "https://a.example/path", "CORS_ORIGIN: 'https://a.example/path' must be"),
])
def test_wrong_values_name_the_variable(name: str, value: str, expected: str) -> None:
    errors = errors_for(env_with(**{name: value}))
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("TRUSTED_PROXIES", "10.0.0.1/32,0.0.0.0/0",
     "TRUSTED_PROXIES must not contain 0.0.0.0/0 (every address) in production"),
    ("TRUSTED_PROXIES", "::/0", "TRUSTED_PROXIES must not contain ::/0"),
    ("METRICS_ALLOWED_CIDRS", "0.0.0.0/0", "METRICS_ALLOWED_CIDRS must not contain 0.0.0.0/0"),
    ("METRICS_ALLOWED_CIDRS", "127.0.0.0/8,::/0", "METRICS_ALLOWED_CIDRS must not contain ::/0"),
    ("GOOGLE_DISCOVERY_URL", "http://idp.example/.well-known/openid-configuration",
     "GOOGLE_DISCOVERY_URL: 'http://idp.example' must use https:// in production"),
    ("GOOGLE_REDIRECT_URI", "https://localhost/auth/google/callback",
     "GOOGLE_REDIRECT_URI: 'https://localhost' must not point to localhost in production"),
    ("GOOGLE_REDIRECT_URI", "http://127.0.0.1:3000/cb",
     "GOOGLE_REDIRECT_URI: 'http://127.0.0.1' must use https:// in production"),
])
def test_production_refuses_unsafe_values(name: str, value: str, expected: str) -> None:
    errors = errors_for(production_env(**{name: value}))
    assert any(e.startswith(expected) for e in errors), errors
    # The same values are accepted outside production (local development, tests).
    load_settings(env_with(**{name: value}), env_file=None)


def test_access_lifetime_longer_than_refresh_lifetime_is_refused() -> None:
    errors = errors_for(env_with(JWT_EXPIRES_IN="8d", JWT_REFRESH_EXPIRES_IN="7d"))
    assert "JWT_EXPIRES_IN must not be longer than JWT_REFRESH_EXPIRES_IN" in errors


@pytest.mark.parametrize("url", [
    "https://user:hunter2@idp.example/.well-known/openid-configuration",
    "ftp://user:hunter2@idp.example/x",
    "http://user:hunter2@idp.example:99999999/x",  # malformed port: urlsplit still parses
    "https://[user:hunter2@idp.example/x",  # malformed: no host can be printed
    "hunter2@idp.example/x?token=hunter2",
])
def test_url_errors_print_scheme_and_host_only(url: str) -> None:
    for name in ("GOOGLE_DISCOVERY_URL", "OPENAI_BASE_URL"):
        try:
            errors = errors_for(production_env(**{name: url}))
        except pytest.fail.Exception:
            continue
        assert not any("hunter2" in e for e in errors), errors


def test_errors_never_echo_url_passwords() -> None:
    errors = errors_for(env_with(DATABASE_URL="mysql://user:hunter2@db/app",
                                 REDIS_URL="http://:hunter2@cache:6379"))
    assert not any("hunter2" in e for e in errors)


def test_every_failure_reported_at_once() -> None:
    env = {
        "APP_ENV": "production",
        "PORT": "abc",
        "RATE_LIMIT_WINDOW_MS": "-1",
        "GOOGLE_CLIENT_ID": "short",
        "OPENAI_API_KEY": "nope",
        "JWT_SECRET": JWT_SECRET_PLACEHOLDER,
        "LOG_LEVEL": "debug",
        "METRICS_ENABLED": "perhaps",
    }
    errors = errors_for(env)
    expected = [
        "PORT: 'abc' is not an integer",
        "METRICS_ENABLED: 'perhaps' is not a boolean (use true/false)",
        "Required environment variable GOOGLE_CLIENT_SECRET is not set (required in production)",
        "GOOGLE_CLIENT_ID appears to be invalid (too short)",
        "OPENAI_API_KEY appears to be invalid (must start with 'sk-')",
        "JWT_SECRET must be changed from the placeholder value",
        "RATE_LIMIT_WINDOW_MS: must be a positive number, got -1",
        "CORS_ORIGIN must not be http://localhost:3000 in production",
        "Required environment variable DATABASE_URL is not set (required in production)",
        "LOG_LEVEL must not be debug in production",
    ]
    for message in expected:
        assert message in errors, (message, errors)
    # The exception text lists them all too (that's what operators see).
    text = str(ConfigError(errors))
    assert all(message in text for message in expected)


def test_env_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        "# comment\n"
        "export GOOGLE_CLIENT_ID=file-client-id-0123456789\n"
        "GOOGLE_CLIENT_SECRET='file-client-secret-0123456789'\n"
        'OPENAI_API_KEY="sk-from-file-0123"\n'
        "JWT_SECRET=file-secret-file-secret-file-secret-1234  # trailing comment\n"
        "PORT=4000\n"
        "not a line\n")
    settings = load_settings({"PORT": "5000"}, env_file=env_file)
    assert settings.google_client_id == "file-client-id-0123456789"
    assert settings.google_client_secret == "file-client-secret-0123456789"
    assert settings.openai_api_key == "sk-from-file-0123"
    assert settings.jwt_secret == "file-secret-file-secret-file-secret-1234"
    assert settings.port == 5000  # the process environment wins over the file
    assert read_env_file(env_file)["PORT"] == "4000"


def test_unreadable_env_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"JWT_SECRET=\xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_settings(dict(VALID_ENV), env_file=env_file)
    assert any(e.startswith(f"Cannot read env file {env_file}") for e in info.value.errors)


def test_parse_duration_forms() -> None:
    assert parse_duration("900") == 900
    assert parse_duration("15m") == 900
    assert parse_duration("24h") == 86400
    assert parse_duration("7d") == 604800
    assert parse_duration("2w") == 1209600
    assert parse_duration("1500ms") == 1
    with pytest.raises(ValueError):
        parse_duration("1.5h")


def test_redacted_masks_secrets() -> None:
    settings = load_settings(dict(VALID_ENV), env_file=None)
    redacted = settings.redacted()
    for attr in ("jwt_secret", "google_client_secret", "openai_api_key", "database_url"):
        assert redacted[attr] == "***"
    assert redacted["google_client_id"] == VALID_ENV["GOOGLE_CLIENT_ID"]
    assert "provided" not in redacted


def test_every_setting_has_a_settings_field() -> None:
    fields = set(Settings.__dataclass_fields__)
    for setting in SETTINGS:
        assert setting.attr in fields, setting.env


# --- Documentation generated from SETTINGS --------------------------------------------------

def test_env_example_matches_settings() -> None:
    content = (ROOT / ".env.example").read_text(encoding="utf-8")
    assert content == env_example(), (
        ".env.example is out of date: run `python -m app env-example > .env.example`")
    names = {line.split("=", 1)[0] for line in content.splitlines()
             if line and not line.startswith("#")}
    assert names == {s.env for s in SETTINGS}


def test_env_example_placeholders_fail_validation() -> None:
    errors = errors_for(read_env_file(ROOT / ".env.example"))
    assert "GOOGLE_CLIENT_ID appears to be invalid (too short)" in errors
    assert "GOOGLE_CLIENT_SECRET appears to be invalid (too short)" in errors
    assert "OPENAI_API_KEY appears to be invalid (must start with 'sk-')" in errors
    assert "JWT_SECRET must be changed from the placeholder value" in errors
    assert "GOOGLE_TOKEN_ENCRYPTION_KEY must be at least 32 characters long" in errors


def test_readme_config_table_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert CONFIG_TABLE_START in readme and CONFIG_TABLE_END in readme
    section = readme.split(CONFIG_TABLE_START, 1)[1].split(CONFIG_TABLE_END, 1)[0]
    assert section.strip() == config_table().strip(), (
        "README configuration table is out of date: replace the lines between the "
        "config-table markers with the output of `python -m app config-table`")


def test_config_table_lists_every_variable_once() -> None:
    table = config_table()
    for setting in SETTINGS:
        assert table.count(f"| `{setting.env}` |") == 1
    assert "*(required)*" in table


@pytest.mark.parametrize("inventory", ["staging", "production"])
def test_the_vault_examples_placeholders_fail_validation(inventory: str) -> None:
    """A vault.yml copied from the example and not filled in must not pass check-config,
    even where a placeholder is long enough or starts with sk-."""
    vault = yaml.safe_load((ROOT / f"inventories/{inventory}/group_vars/all/vault.yml.example")
                           .read_text())
    env = production_env(
        JWT_SECRET=vault["app_jwt_secret"],
        GOOGLE_TOKEN_ENCRYPTION_KEY=vault["app_google_token_encryption_key"],
        GOOGLE_CLIENT_ID=vault["app_google_client_id"],
        GOOGLE_CLIENT_SECRET=vault["app_google_client_secret"],
        OPENAI_API_KEY=vault["app_openai_api_key"],
        DATABASE_URL=f"postgres://assistantapp:{vault['postgresql_app_password']}@db:5432/app",
        REDIS_URL=f"redis://assistantapp:{vault['redis_app_password']}@cache:6379/0")
    flagged = {e.split(" ", 1)[0] for e in errors_for(env) if "placeholder (CHANGE-ME)" in e}
    assert flagged == {"JWT_SECRET", "GOOGLE_TOKEN_ENCRYPTION_KEY", "GOOGLE_CLIENT_ID",
                       "GOOGLE_CLIENT_SECRET", "OPENAI_API_KEY", "DATABASE_URL", "REDIS_URL"}


def test_a_real_looking_value_is_not_a_placeholder() -> None:
    # The marker is a word of its own: a secret that merely contains the letters passes.
    settings = load_settings(env_with(JWT_SECRET="exchange-medley-" + "x" * 32), env_file=None)
    assert settings.jwt_secret.startswith("exchange-medley-")
