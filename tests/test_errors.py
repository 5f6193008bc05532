"""Framework errors answer in the API's JSON shape and never leak internals."""

from __future__ import annotations

from sanic import Sanic


async def test_unknown_route_is_json_404(app: Sanic) -> None:
    _, response = await app.asgi_client.get("/no/such/route")
    assert response.status == 404
    assert response.json["code"] == "not_found"
    assert "error" in response.json


async def test_wrong_method_is_json_405(app: Sanic) -> None:
    _, response = await app.asgi_client.delete("/health/live")
    assert response.status == 405
    assert response.json["code"] == "method_not_allowed"


async def test_unexpected_exception_is_json_500_without_details(app: Sanic) -> None:
    @app.get("/boom")
    async def boom(request):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internal detail")

    _, response = await app.asgi_client.get("/boom")
    assert response.status == 500
    assert response.json == {"error": "Internal server error", "code": "internal_error"}
    assert "secret internal detail" not in response.text

