"""The OpenAPI 3.1 document of the JSON API (`GET /api/openapi.json`), written here beside the
routes it describes; `tests/webapp/test_openapi.py` validates it and checks that every route of
the app is in it, so it cannot fall behind them. Each gallery route is described once and listed
twice: for the default gallery (`/api/search`) and for each by name
(`/api/galleries/{gallery}/search`).
"""
from __future__ import annotations

from copy import deepcopy
from typing import Any

from encoder.verdict import DISTANCE_DECIMALS, PROBABILITY_DECIMALS

from .settings import Settings

JSON_TYPE, FORM_TYPE = "application/json", "multipart/form-data"


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def error(status_words: str) -> dict:
    return {"description": status_words,
            "content": {JSON_TYPE: {"schema": ref("Error")}}}


ERRORS = {
    "400": error("Bad request: a missing or malformed field, a bad image, an absurd parameter; "
                 "the message names the field"),
    "401": error("A key is needed (X-API-Key, or the pages' sign-in)"),
    "403": error("Wrong key, a read key for a change, or a change sent from another site's page"),
    "404": error("No such gallery or item"),
    "408": error("The upload came too slowly"),
    "413": error("Over the size limit (per image, per request, or too many fields)"),
    "415": error("Neither multipart/form-data nor application/json, or not an image"),
    "503": error("The database or the gallery's files cannot be reached now, or the gallery "
                 "was re-embedded with another model; Retry-After says when to try again"),
    "507": error("The server's disk is full; nothing was stored"),
}


def errors(*codes: str) -> dict:
    return {code: ERRORS[code] for code in codes}


READ_ERRORS = ("400", "401", "403", "404", "503")
UPLOAD_ERRORS = READ_ERRORS + ("408", "413", "415")

IMAGE = {"type": "string", "format": "binary", "description": "an image file (PNG, JPEG, GIF, "
         "WebP, BMP or TIFF)"}
BASE64_IMAGE = {"type": "string", "contentEncoding": "base64",
                "description": "the image file's bytes as base64, or a data: URL "
                               "(data:image/png;base64,...)"}
RULE_FIELDS = {
    "operating_point": {"type": "string", "description": "a named operating point of the model "
                        "(`balanced`, `far-1e-2`, `far-1e-3`; GET /api/stats lists them); default: "
                        "the gallery's"},
    "threshold": {"type": "number", "minimum": 0, "description": "an explicit distance threshold "
                  "instead of an operating point"},
}
K_FIELD = {"type": "integer", "minimum": 1, "description": "matches to return (default 8, at most "
           "the server's max_k, 100)"}


def body(fields: dict[str, Any], required: list[str], json_fields: dict[str, Any] | None = None
         ) -> dict:
    """A request body as multipart (files) or JSON (base64), with the same fields."""
    def schema(props):
        return {"type": "object", "properties": props, "required": required}

    json_props = {k: json_fields.get(k, v) if json_fields else v for k, v in fields.items()}
    for name, value in fields.items():
        if value is IMAGE:
            json_props[name] = BASE64_IMAGE
        elif value.get("type") == "array" and value["items"] is IMAGE:
            json_props[name] = {"type": "array", "items": BASE64_IMAGE}
    return {"required": True, "content": {FORM_TYPE: {"schema": schema(fields)},
                                          JSON_TYPE: {"schema": schema(json_props)}}}


def ok(description: str, schema: dict, status: str = "200") -> dict:
    return {status: {"description": description, "content": {JSON_TYPE: {"schema": schema}}}}


def images(most: int) -> dict:
    return {"type": "array", "items": IMAGE, "minItems": 1, "maxItems": most}


def operations(settings: Settings) -> dict[str, dict[str, dict]]:
    """{path under /api (of the default gallery): {method: operation}}."""
    most = settings.max_batch
    item_id = {"name": "item_id", "in": "path", "required": True,
               "schema": {"type": "integer", "minimum": 1}}
    return {
        "/search": {"post": {
            "summary": "Rank the gallery by distance to an image",
            "description": "The k nearest items, each with its verdict under the request's rule "
                           "(operating point or threshold, else the gallery's default). "
                           "`same_image` marks an item whose file is byte for byte the query.",
            "requestBody": body({"image": IMAGE, "k": K_FIELD, **RULE_FIELDS}, ["image"]),
            "responses": {**ok("The matches, nearest first", ref("SearchResult")),
                          **errors(*UPLOAD_ERRORS)}}},
        "/search/batch": {"post": {
            "summary": "Search with several images in one request",
            "description": f"Up to {most} images (repeated `image` file fields, or a list of "
                           "base64 texts), embedded in one pass and searched in one index call: "
                           "the same matches as one /search each, several times faster.",
            "requestBody": body({"image": images(most), "k": K_FIELD, **RULE_FIELDS}, ["image"]),
            "responses": {**ok("One result per image, in order", ref("BatchSearchResult")),
                          **errors(*UPLOAD_ERRORS)}}},
        "/verify": {"post": {
            "summary": "Are two images the same (1:1)?",
            "requestBody": body({"image_a": IMAGE, "image_b": IMAGE, **RULE_FIELDS},
                                ["image_a", "image_b"]),
            "responses": {**ok("The verdict", ref("Verdict")), **errors(*UPLOAD_ERRORS)}}},
        "/verify/batch": {"post": {
            "summary": "Verify several pairs in one request",
            "description": f"Pair i is image_a's i-th image with image_b's i-th (up to {most} "
                           "pairs, as many of each).",
            "requestBody": body({"image_a": images(most), "image_b": images(most),
                                 **RULE_FIELDS}, ["image_a", "image_b"]),
            "responses": {**ok("One verdict per pair, in order", ref("BatchVerifyResult")),
                          **errors(*UPLOAD_ERRORS)}}},
        "/identify": {"post": {
            "summary": "Who is this (1:N)?",
            "description": "The enrolled item the image shows, judged at the threshold that "
                           "keeps the false-positive identification rate at `fpir` for the "
                           "gallery's size; `match` is null when nobody is close enough.",
            "requestBody": body({"image": IMAGE, "fpir": {"type": "number", "exclusiveMinimum": 0,
                                                          "maximum": 1},
                                 "threshold": RULE_FIELDS["threshold"]}, ["image"]),
            "responses": {**ok("The identification", ref("Identification")),
                          **errors(*UPLOAD_ERRORS)}}},
        "/gallery": {
            "post": {
                "summary": "Add an image",
                "description": "Needs the write key when one is set. An image already in the "
                               "gallery (the same bytes) is not added again: 200 with the item "
                               "it is, and its label stays.",
                "requestBody": body({"image": IMAGE, "label": {"type": "string", "maxLength": 200},
                                     "metadata": {"type": "string",
                                                  "description": "a JSON object, as text"}},
                                    ["image", "label"],
                                    {"metadata": {"type": "object"}}),
                "responses": {**ok("Added", ref("Added"), "201"),
                              **ok("Already in the gallery", ref("Added")),
                              **errors(*UPLOAD_ERRORS, "507")}},
            "get": {
                "summary": "List the gallery's items, oldest first",
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "label", "in": "query", "schema": {"type": "string"}}],
                "responses": {**ok("A page of items", ref("ItemList")), **errors(*READ_ERRORS)}}},
        "/gallery/{item_id}": {
            "get": {"summary": "One item", "parameters": [item_id],
                    "responses": {**ok("The item", {"type": "object", "properties":
                                                    {"item": ref("Item")}}),
                                  **errors(*READ_ERRORS)}},
            "patch": {"summary": "Change an item's label or metadata",
                      "description": "Needs the write key when one is set. Fields not given stay.",
                      "parameters": [item_id],
                      "requestBody": {"required": True, "content": {JSON_TYPE: {"schema": {
                          "type": "object", "properties": {
                              "label": {"type": "string", "maxLength": 200},
                              "metadata": {"type": "object"}}}}}},
                      "responses": {**ok("The item as it is now", {"type": "object", "properties":
                                                                   {"item": ref("Item")}}),
                                    **errors(*READ_ERRORS, "415", "507")}},
            "delete": {"summary": "Delete an item", "parameters": [item_id],
                       "description": "Needs the write key when one is set.",
                       "responses": {"204": {"description": "Deleted"},
                                     **errors(*READ_ERRORS, "507")}}},
        "/gallery/{item_id}/image": {"get": {
            "summary": "An item's original image, as it was added",
            "parameters": [item_id],
            "responses": {"200": {"description": "The image's bytes, with an ETag (its sha256)",
                                  "content": {"image/*": {"schema": {"type": "string",
                                                                     "format": "binary"}}}},
                          "304": {"description": "Not modified (If-None-Match)"},
                          **errors(*READ_ERRORS)}}},
        "/gallery/{item_id}/neighbours": {"get": {
            "summary": "An item's nearest other items",
            "parameters": [item_id, {"name": "k", "in": "query", "schema": K_FIELD}],
            "responses": {**ok("The nearest other items", ref("SearchResult")),
                          **errors(*READ_ERRORS)}}},
        "/stats": {"get": {
            "summary": "The model, the verdict's defaults and the gallery's size and index",
            "responses": {**ok("Statistics", {"type": "object"}), **errors(*READ_ERRORS)}}},
    }


# One runnable example per operation, for the API docs page (`x-example`): from the repository
# root, against the demo on 127.0.0.1:8000, with the write key in SIAMESE_API_KEY where a change
# needs it; what one writes goes in runs/, which git ignores (tests/test_docs_examples.py runs
# every one against a live server).
HOST = "http://127.0.0.1:8000"
KEY = '-H "X-API-Key: $SIAMESE_API_KEY" '
EXAMPLES = {
    ("post", "/search"): f"curl -F image=@samples/queries/bag.png -F k=3 {HOST}/api/search",
    ("post", "/search/batch"): "curl -F image=@samples/queries/bag.png "
                               f"-F image=@samples/queries/coat.png -F k=2 {HOST}/api/search/batch",
    ("post", "/verify"): "curl -F image_a=@samples/queries/coat.png "
                         f"-F image_b=@samples/queries/coat-2.png {HOST}/api/verify",
    ("post", "/verify/batch"): "curl -F image_a=@samples/queries/coat.png "
                               "-F image_b=@samples/queries/coat-2.png "
                               "-F image_a=@samples/queries/bag.png "
                               f"-F image_b=@samples/queries/trouser.png {HOST}/api/verify/batch",
    ("post", "/identify"): "curl -F image=@samples/queries/sneaker.png -F fpir=0.01 "
                           f"{HOST}/api/identify",
    ("get", "/gallery"): f"curl '{HOST}/api/gallery?limit=3&label=Bag'",
    ("post", "/gallery"): f"curl {KEY}-F image=@samples/queries/trouser.png -F label=Trouser "
                          f"-F 'metadata={{\"sku\": \"T-1\"}}' {HOST}/api/gallery",
    ("get", "/gallery/{item_id}"): f"curl {HOST}/api/gallery/1",
    ("patch", "/gallery/{item_id}"): f"curl -X PATCH {KEY}-H 'Content-Type: application/json' "
                                     f"-d '{{\"metadata\": {{\"price\": 3.5}}}}' "
                                     f"{HOST}/api/gallery/1",
    ("delete", "/gallery/{item_id}"): f"curl -X DELETE {KEY}{HOST}/api/gallery/2",
    ("get", "/gallery/{item_id}/image"): f"curl --create-dirs -o runs/item-1.png "
                                         f"{HOST}/api/gallery/1/image",
    ("get", "/gallery/{item_id}/neighbours"): f"curl '{HOST}/api/gallery/1/neighbours?k=3'",
    ("get", "/stats"): f"curl {HOST}/api/stats",
    ("get", "/healthz"): f"curl {HOST}/healthz",
    ("get", "/api/galleries"): f"curl {HOST}/api/galleries",
    ("get", "/api/openapi.json"): f"curl {HOST}/api/openapi.json",
}


def document(settings: Settings) -> dict:
    paths: dict[str, dict] = {
        "/healthz": {"get": {"summary": "Alive, and every gallery's database answers",
                             "tags": ["service"],
                             "responses": {**ok("Healthy", {"type": "object", "properties": {
                                 "status": {"const": "ok"}, "model": {"type": "string"},
                                 "items": {"type": "integer"}, "galleries": {"type": "integer"}}}),
                                 **errors("503")}}},
        "/api/galleries": {"get": {"summary": "The galleries this server serves, default first",
                                   "tags": ["service"],
                                   "responses": ok("The galleries", ref("GalleryList"))}},
        "/api/openapi.json": {"get": {"summary": "This document", "tags": ["service"],
                                      "responses": ok("OpenAPI 3.1", {"type": "object"})}},
    }
    gallery_param = {"name": "gallery", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
                     "description": "the gallery's name (GET /api/galleries lists them)"}
    for path, methods in paths.items():
        for m, op in methods.items():
            op["x-example"] = EXAMPLES[(m, path)]
    for path, methods in operations(settings).items():
        paths["/api" + path] = {m: {**op, "tags": ["default gallery"],
                                    "operationId": _operation_id(m, path, named=False),
                                    "x-example": EXAMPLES[(m, path)]}
                                for m, op in methods.items()}
        named = {}
        for m, op in methods.items():
            op = deepcopy(op)
            op["parameters"] = [gallery_param, *op.get("parameters", [])]
            op.update(tags=["galleries by name"], operationId=_operation_id(m, path, named=True))
            named[m] = op
        paths["/api/galleries/{gallery}" + path] = named
    return {
        "openapi": "3.1.0",
        "info": {"title": "siamese-search", "version": "1",
                 "description": "Find and verify similar images. Every answer is JSON, errors "
                                "too: {\"error\": {\"code\", \"message\"}}. Distances are "
                                f"Euclidean, shown to {DISTANCE_DECIMALS} decimals; "
                                f"probabilities to {PROBABILITY_DECIMALS}. Images come as "
                                "multipart file fields or as base64 in a JSON body."},
        "servers": [{"url": "/"}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                       "description": "a gallery's write key (changes and reads) or read key "
                                      "(searches and reads), where the gallery has one"}}},
        "security": [{}, {"apiKey": []}],
        "paths": paths,
    }


def _operation_id(method: str, path: str, named: bool) -> str:
    words = [w.strip("{}") for w in path.strip("/").split("/")]
    return "_".join([method, *words] + (["by_name"] if named else []))


def _object(properties: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": properties,
            "required": required if required is not None else list(properties)}


NUMBER_OR_NULL = {"type": ["number", "null"]}
RULE = {"operating_point": {"type": "string"}, "threshold": {"type": "number"}}
DOMAIN = {"in_domain": {"type": ["boolean", "null"], "description": "whether the image looks "
                        "like the model's training data; null: not checked (no domain model)"},
          "domain_score": NUMBER_OR_NULL, "domain_reason": {"type": ["string", "null"]},
          "domain_check_weak": {"type": "boolean", "description": "the model's domain check "
                                "misses its targets (its card's domain.weak says which): "
                                "in_domain says less than it should"}}
MATCH = _object({"id": {"type": "integer"}, "label": {"type": ["string", "null"]},
                 "distance": {"type": "number", "minimum": 0},
                 "probability": {**NUMBER_OR_NULL, "description":
                                 "calibrated P(same); null for a query out of domain or a "
                                 "featureless item"},
                 "verified": {"type": "boolean"},
                 "same_image": {"type": "boolean", "description": "the item's file is the query's"},
                 "featureless": {"type": "boolean", "description":
                                 "the model finds no features in the item's image: it gives "
                                 "every such image the same embedding, so it is never verified"},
                 "image_url": {"type": "string"}, "metadata": {"type": "object"}})
ITEM = _object({"id": {"type": "integer"}, "label": {"type": ["string", "null"]},
                "source": {"type": "string"}, "sha256": {"type": "string"},
                "width": {"type": "integer"}, "height": {"type": "integer"},
                "media_type": {"type": "string"}, "added": {"type": "string", "format": "date-time"},
                "metadata": {"type": "object"}, "image_url": {"type": "string"}})
VERDICT = _object({"verified": {"type": "boolean"}, "distance": {"type": "number"},
                   "probability": NUMBER_OR_NULL, **DOMAIN,
                   "same_image": {"type": "boolean",
                                  "description": "the two files are byte for byte the same"}})
SCHEMAS = {
    "Error": _object({"error": _object({"code": {"type": "string"},
                                        "message": {"type": "string"}})}),
    "Match": MATCH,
    "Item": ITEM,
    "SearchResult": _object({"model": {"type": "string"}, **RULE, **DOMAIN,
                             "matches": {"type": "array", "items": ref("Match")}},
                            ["model", "operating_point", "threshold", "matches"]),
    "BatchSearchResult": _object({"model": {"type": "string"}, **RULE, "results": {
        "type": "array", "items": _object({**DOMAIN, "matches": {"type": "array",
                                                                 "items": ref("Match")}})}},
        ["model", "operating_point", "threshold", "results"]),
    "Verdict": {**VERDICT, "properties": {"model": {"type": "string"}, **RULE,
                                          **VERDICT["properties"]}},
    "BatchVerifyResult": _object({"model": {"type": "string"}, **RULE,
                                  "results": {"type": "array", "items": VERDICT}},
                                 ["model", "operating_point", "threshold", "results"]),
    "Identification": _object({"model": {"type": "string"}, **RULE, **DOMAIN,
                               "fpir": {"type": "number"}, "gallery_size": {"type": "integer"},
                               "identities": {"type": "integer", "description":
                                              "labels enrolled, each unlabelled item its own"},
                               "basis": {"type": "string",
                                         "enum": ["gallery", "scaled-card", "card"],
                                         "description": "where the threshold came from: the "
                                         "gallery's own items, the card's open-set model scaled "
                                         "to the gallery's spread, or the card's alone"},
                               "scale": {"type": "number", "description": "with scaled-card: "
                                         "the gallery's median nearest-impostor distance against "
                                         "the card's prediction of it (0.25-2)"},
                               "match": {"oneOf": [ref("Match"), {"type": "null"}]},
                               "nearest": {"oneOf": [ref("Match"), {"type": "null"}],
                                           "description": "the nearest item that can be judged "
                                           "(not a featureless one, unless only those are in "
                                           "reach)"}},
                              ["model", "operating_point", "threshold", "match", "nearest"]),
    "Added": _object({"item": ref("Item"), "created": {"type": "boolean"},
                      "featureless": {"type": "boolean", "description": (
                          "the model finds no features in the image: no other image will be "
                          "verified against this item (then `warning` says so)")},
                      "warning": {"type": "string"},
                      "label_changed": {"type": "boolean"}, "message": {"type": "string"}},
                     ["item", "created", "featureless"]),
    "ItemList": _object({"items": {"type": "array", "items": ref("Item")},
                         "total": {"type": "integer"}, "offset": {"type": "integer"},
                         "limit": {"type": "integer"}, "next": {"type": ["string", "null"]}}),
    "GalleryList": _object({"galleries": {"type": "array", "items": _object({
        "name": {"type": "string"}, "default": {"type": "boolean"}, "model": {"type": "string"},
        "items": {"type": ["integer", "null"], "description": "null without a read key"},
        "read_key_required": {"type": "boolean"}, "write_key_required": {"type": "boolean"},
        "url": {"type": "string"}})}}),
}
