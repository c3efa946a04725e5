"""GET /openapi.json: every routed operation documented, nothing documented that is not
routed, a valid OpenAPI 3.1 document; GET /docs renders it without any CDN."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import openapi
from ingest_gateway.app import create_app
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.unit.test_hostile_input import Producer


def _app():
    return create_app(GatewaySettings(), parse_config(globex_config()), producer=Producer())


def _routed() -> set[tuple[str, str]]:
    return {(r.method, r.resource.canonical) for r in _app().router.routes() if r.method != "HEAD"}


def _documented() -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in openapi.document()["paths"].items() for m in item}


def test_every_route_is_documented():
    missing = sorted(_routed() - _documented() - openapi.NOT_OPERATIONS)
    assert not missing, "routes of create_app() missing from ingest_gateway/openapi.py OPERATIONS: " + ", ".join(
        f"{m} {p}" for m, p in missing
    )


def test_nothing_documented_is_unrouted():
    extra = sorted(_documented() - _routed())
    assert not extra, "OPERATIONS in ingest_gateway/openapi.py that create_app() does not route: " + ", ".join(
        f"{m} {p}" for m, p in extra
    )


def test_the_document_is_valid_openapi_3_1():
    validator = pytest.importorskip("openapi_spec_validator")
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validator.validate(doc)


def test_each_dialect_has_its_auth_and_error_shape():
    doc = openapi.document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["triggerlyApiToken"] == {**schemes["triggerlyApiToken"], "in": "query", "name": "api_token"}
    assert schemes["customerioBasic"]["scheme"] == schemes["segmentBasic"]["scheme"] == "basic"
    assert schemes["adminBearer"]["scheme"] == "bearer"
    paths = doc["paths"]
    assert paths["/v1/users/track"]["get"]["security"] == [{"triggerlyApiToken": []}]
    assert paths["/customers"]["post"]["security"] == [{"retainlyKey": [], "retainlySecret": []}]
    assert paths["/admin/v1/train"]["post"]["security"] == [{"adminBearer": []}]
    assert paths["/v1/track"]["post"]["responses"]["4XX"]["$ref"].endswith("/SegmentError")
    assert paths["/api/v2/batch"]["post"]["responses"]["4XX"]["$ref"].endswith("/CustomerioError")


async def test_served_document_and_docs_page():
    async with TestClient(TestServer(_app())) as client:
        resp = await client.get("/openapi.json")
        assert resp.status == 200 and resp.headers["X-Request-Id"]
        assert (await resp.json()) == openapi.document()
        page = await client.get("/docs")
        assert page.status == 200 and page.content_type == "text/html"
        html = await page.text()
        assert 'fetch("openapi.json")' in html and "http://" not in html and "https://" not in html  # no CDN
