"""openapi.yaml describes exactly the routes the REST bridge registers (no more, no fewer)."""

from __future__ import annotations

from pathlib import Path

import yaml  # the `test` extra installs pyyaml; a skip here would hide drift

from http_bridge import Services, build_app

SPEC = Path(__file__).resolve().parents[2] / "openapi.yaml"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def spec_operations() -> set[tuple[str, str]]:
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    return {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def app_routes() -> set[tuple[str, str]]:
    # Routes are registered without calling the services, so dummies are enough.
    app = build_app(Services(identity=None, sharing=None, health=None))  # type: ignore[arg-type]
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # aiohttp adds HEAD to each GET
    }


def test_spec_paths_and_methods_match_the_registered_routes() -> None:
    in_spec, served = spec_operations(), app_routes()
    assert in_spec == served, (
        f"only in openapi.yaml: {sorted(in_spec - served)}; only in the app: {sorted(served - in_spec)}"
    )


def test_spec_is_openapi_3_1() -> None:
    spec = yaml.safe_load(SPEC.read_text(encoding="utf-8"))
    assert str(spec["openapi"]).startswith("3.1.")
