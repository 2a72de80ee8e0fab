"""The OpenAPI document: valid OpenAPI 3.1, and every route of the JSON API is in it with each of
its methods, so it cannot fall behind them."""
from __future__ import annotations

import re
from html import unescape

from openapi_spec_validator import validate


def test_the_openapi_document_is_valid_and_describes_every_api_route(app, client):
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.")
    described = 0
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("pages."):
            continue  # the pages are HTML for people, not API
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        assert path in document["paths"], f"{rule.rule} ({rule.endpoint}) is not documented"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][path].get(method.lower())
            assert operation, f"{method} {rule.rule} is not documented"
            assert operation["responses"] and operation["summary"]
            described += 1
            parameters = {p["name"] for p in operation.get("parameters", [])
                          if p["in"] == "path"}
            assert parameters == set(rule.arguments), (rule.rule, parameters)
    assert described >= 25
    # ... and nothing documented that the app does not serve
    served = {re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()}
    assert set(document["paths"]) <= served


def test_every_error_status_the_api_answers_is_documented(client, sample_pngs):
    document = client.get("/api/openapi.json").get_json()
    search = document["paths"]["/api/search"]["post"]["responses"]
    for status in ("400", "401", "403", "404", "413", "415", "503"):
        assert search[status]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
    # an actual error has the documented shape
    error = client.post("/api/search", json={"image": "%"}).get_json()
    assert set(error) == {"error"} and set(error["error"]) == {"code", "message"}


def test_the_api_docs_page_lists_every_operation(client):
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = unescape(page.get_data(as_text=True))
    document = client.get("/api/openapi.json").get_json()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert f"{method.upper()} {path}" in html
            assert operation["summary"] in html


def test_the_api_docs_page_is_navigable_with_examples_and_rendered_code(client):
    """A table of contents linking every operation, one curl example each, Markdown code as
    <code> (it showed raw backticks), and the answers' fields in tables."""
    html = client.get("/api/docs").get_data(as_text=True)
    document = client.get("/api/openapi.json").get_json()
    operations = [op for path, methods in document["paths"].items() if "{gallery}" not in path
                  for op in methods.values()]
    toc = html[html.index('<nav class="toc"'):html.index("</nav>", html.index('<nav class="toc"'))]
    assert all(f'href="#{op["operationId"]}"' in toc for op in operations if "operationId" in op)
    assert html.count('<pre class="example">') == len(operations) == 16
    assert "`" not in unescape(re.sub(r"<pre.*?</pre>", "", html, flags=re.S))
    assert "<code>same_image</code>" in html
    assert "Answer fields (200)" in html and "<code>matches</code>" in html
