"""The suite's warning policy (pyproject.toml [tool.pytest.ini_options] filterwarnings):
deprecations from our own code fail the suite; only named third-party helpers are silenced."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("category", [DeprecationWarning, PendingDeprecationWarning,
                                      FutureWarning])
@pytest.mark.parametrize("module", ["app", "app.ops.health", "app.auth.google"])
def test_a_deprecation_raised_from_app_fails(category: type[Warning], module: str) -> None:
    with pytest.raises(category):
        warnings.warn_explicit("old API", category, f"{module.replace('.', '/')}.py", 1,
                               module=module)


def test_other_modules_deprecations_are_still_reported_not_errors() -> None:
    # Not silenced either: an unexpected third-party deprecation shows in the summary.
    with pytest.warns(DeprecationWarning, match="old API"):
        warnings.warn_explicit("old API", DeprecationWarning, "somelib/x.py", 1,
                               module="somelib.x")
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "application/x.py", 1,
                               module="application.x")


def test_the_named_third_party_helper_warnings_are_silenced() -> None:
    with warnings.catch_warnings(record=True) as caught:
        # Only the ini filters apply (pytest installed them for this test); "always" would
        # override them, so keep the current filter list as it is.
        warnings.warn_explicit(
            "websockets.legacy is deprecated; see https://websockets.readthedocs.io",
            DeprecationWarning, "sanic_testing/websocket.py", 1, module="sanic_testing.x")
        warnings.warn_explicit(
            "get_jwt_config(self, grant) is deprecated and will be removed in version 1.8.",
            DeprecationWarning, "authlib/oidc/core/grants/_legacy.py", 40,
            module="authlib.oidc.core.grants._legacy")
    assert caught == []
