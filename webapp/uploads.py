"""Reading a request's fields: uploaded images (kept in memory, decoded by `encoder.images`) and
the small parameters beside them, each checked with a message that names the field.

A request is a multipart form (files, text fields) or a JSON object (images as base64 text,
optionally a `data:` URL; parameters as JSON values); the query string may add parameters to
either. Every reader below takes both.

Uploads never touch the disk: werkzeug would spool files over 500 kB to a temporary file, so
`UploadRequest` keeps every part in memory instead (the request size is capped by
`MAX_CONTENT_LENGTH`). An image is written only by the gallery, into its own database.

Multipart bodies are not parsed by werkzeug: it compiles two regular expressions for every
request's fresh boundary, ~0.6 ms a request, more than a FAISS search of 10,000 items. A body as
clients write it is split with `bytes.find` (~5 us for a search's upload); any other goes to
python-multipart (Starlette's parser, ~50 us), and what that declines to werkzeug.
"""
from __future__ import annotations

import base64
import binascii
import io
import json
import re
from typing import Any, Optional

from flask import Request, current_app, g, request
from PIL import Image
from python_multipart.multipart import MultipartParser, MultipartState
from werkzeug.datastructures import FileStorage, Headers
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout, UnsupportedMediaType
from werkzeug.formparser import FormDataParser
from werkzeug.http import parse_options_header
from werkzeug.utils import secure_filename

from encoder.errors import ConfigError
from encoder.images import decode_shrunk, megabytes
from encoder.params import Range, parse_int
from indexer.records import MAX_LABEL_LENGTH, check_text

from .errors import MissingFieldError
from .front import SLOW_BODY
from .service import get_embedder


class MultipartFormParser(FormDataParser):
    """werkzeug's form parser with python-multipart for multipart bodies, keeping werkzeug's
    limits: `max_form_parts` parts, `max_form_memory_size` bytes of text fields (both 413).

    A body python-multipart rejects goes to werkzeug's own parser, which accepts some quirks
    (an empty part with no line break before the next boundary, as werkzeug's test client writes
    it) and answers the rest as it always has."""

    def _parse_multipart(self, stream, mimetype, content_length, options):
        boundary = options.get("boundary", "").encode("latin-1")
        limit = self.max_content_length
        try:
            body = read_body(stream)  # bounded: werkzeug limits the stream to MAX_CONTENT_LENGTH
        except RequestEntityTooLarge:  # werkzeug's words for a chunked body read past the limit
            raise RequestEntityTooLarge(f"the request is over the {megabytes(limit)} limit"
                                        ) from None
        if content_length is None and limit is not None and len(body) >= limit:
            # A chunked body (no Content-Length) is cut at the limit, not refused: refuse it here,
            # or its truncated form would read as a missing field.
            raise RequestEntityTooLarge(f"the request is over the {megabytes(limit)} limit")
        parsed = _parse_multipart_body(body, boundary, self.max_form_parts) if boundary else None
        if parsed is None:
            return super()._parse_multipart(io.BytesIO(body), mimetype, content_length, options)
        form, files, text_bytes = [], [], 0
        for headers, data in parsed:
            disposition = _disposition(headers.get("Content-Disposition"))
            name = disposition.get("name")
            if name is None:
                continue  # not a form field (werkzeug skips these too)
            if "filename" in disposition:
                files.append((name, FileStorage(io.BytesIO(data), disposition["filename"], name,
                                                headers.get("Content-Type"), headers=headers)))
                continue
            text_bytes += len(data)
            if self.max_form_memory_size is not None and text_bytes > self.max_form_memory_size:
                raise RequestEntityTooLarge(
                    f"the form's text fields are over {self.max_form_memory_size:,} bytes")
            form.append((name, data.decode("utf-8", "replace")))
        return stream, self.cls(form), self.cls(files)


def read_body(stream) -> bytes:
    """The request body. The worker's front (`front.Front`) has received it whole before the app
    runs, or says why it stopped (too slow: 408)."""
    why = request.environ.get(SLOW_BODY)
    if why:
        raise RequestTimeout(f"the upload was too slow ({why}); send it faster, or through a "
                             "proxy that buffers uploads")
    return stream.read()


# A part's Content-Disposition as browsers, curl and requests write it: form-data; name="..."; ...
# with werkzeug's separators (spaces and tabs only) and no value it would decode (no backslash,
# no %: browsers write a quote in a file name as %22).
_PLAIN_DISPOSITION = re.compile(
    r'(?i:form-data)(?:[ \t]*;[ \t]*[A-Za-z0-9_.-]+="[^"\\\r\n%]*")*[ \t]*')
_PLAIN_PARAMETER = re.compile(r';[ \t]*([A-Za-z0-9_.-]+)="([^"\\\r\n%]*)"')


def _disposition(value: Optional[str]) -> dict[str, str]:
    """A part's Content-Disposition parameters, names in lower case. The plain form is read by a
    regular expression (2 us); anything else (unquoted, escaped or percent-encoded values,
    RFC 2231's `name*=`) by werkzeug's parser (25 us)."""
    if value is not None and _PLAIN_DISPOSITION.fullmatch(value):
        return {name.lower(): text for name, text in _PLAIN_PARAMETER.findall(value)}
    return parse_options_header(value)[1]


def _parse_multipart_body(body: bytes, boundary: bytes, max_parts: Optional[int]
                          ) -> Optional[list[tuple[Headers, bytes]]]:
    """The (headers, data) of each part (split plainly, else by python-multipart), or None when
    neither can parse the body, or when a part holds the boundary: RFC 2046 forbids that, so
    the body is werkzeug's kind of quirky (an empty part with no line break before the next
    boundary), and werkzeug's parser reads it."""
    parts = _split_plain_multipart(body, boundary, max_parts)
    if parts is None:
        parts = _parse_with_python_multipart(body, boundary, max_parts)
    if parts is None or any(b"--" + boundary in data for _, data in parts):
        return None
    return [(Headers(headers), data) for headers, data in parts]


def _parse_with_python_multipart(body: bytes, boundary: bytes, max_parts: Optional[int]
                                 ) -> Optional[list[tuple[list[tuple[str, str]], bytes]]]:
    parts: list[tuple[list[tuple[str, str]], list[bytes]]] = []

    def on_part_begin():
        if max_parts is not None and len(parts) >= max_parts:
            raise RequestEntityTooLarge(f"more than {max_parts} form fields")
        parts.append(([], []))

    def on_header_field(data, start, end):
        parts[-1][0].append((data[start:end].decode("latin-1"), ""))

    def on_header_value(data, start, end):
        headers = parts[-1][0]
        headers[-1] = (headers[-1][0], headers[-1][1] + data[start:end].decode("latin-1"))

    def on_part_data(data, start, end):
        parts[-1][1].append(data[start:end])

    try:
        parser = MultipartParser(boundary, {"on_part_begin": on_part_begin,
                                            "on_header_field": on_header_field,
                                            "on_header_value": on_header_value,
                                            "on_part_data": on_part_data})
        parser.write(body)
    except ValueError:  # python-multipart's parse errors, a boundary over 70 characters
        return None
    if parser.state != MultipartState.END:
        return None
    return [(headers, b"".join(chunks)) for headers, chunks in parts]


MAX_PART_HEADERS, MAX_HEADER_LINE = 8, 4096
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110)


def _split_plain_multipart(body: bytes, boundary: bytes, max_parts: Optional[int]
                           ) -> Optional[list[tuple[list[tuple[str, str]], bytes]]]:
    """The parts of a body as clients write it (no preamble or epilogue, CRLF line ends, each
    header line `Name: value`), split with `bytes.find`: ~5 us for a search's upload, against
    ~50 us for python-multipart's callbacks. None for anything else, which python-multipart (and
    then werkzeug) parse as before."""
    delimiter = b"--" + boundary
    if not body.startswith(delimiter) or len(boundary) > 70:  # RFC 2046's longest
        return None
    parts: list[tuple[list[tuple[str, str]], bytes]] = []
    at = len(delimiter)
    while True:
        if body.startswith(b"--", at):  # the close delimiter
            return parts if parts and body[at + 2:] in (b"", b"\r\n") else None
        if not body.startswith(b"\r\n", at):
            return None
        head_end = body.find(b"\r\n\r\n", at)
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if head_end < 0 or end < 0:
            return None
        # python-multipart's limits (8 headers a part, 4 kB a line), or what it would refuse
        # (a name that is not a token, a stray CR or LF): left to it, and so to its answers.
        # The block's size is checked before it is split: megabytes of empty lines are not
        # made into a list.
        if head_end - at > MAX_PART_HEADERS * (MAX_HEADER_LINE + 2):
            return None
        lines = body[at + 2:head_end].split(b"\r\n") if head_end > at else []
        if len(lines) > MAX_PART_HEADERS or any(len(line) > MAX_HEADER_LINE for line in lines):
            return None
        headers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            value = value.lstrip(b" ")
            if not colon or not _TOKEN.fullmatch(name) or b"\r" in value or b"\n" in value:
                return None
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        data = body[head_end + 4:end]
        if max_parts is not None and len(parts) >= max_parts:
            raise RequestEntityTooLarge(f"more than {max_parts} form fields")
        parts.append((headers, data))
        at = end + 2 + len(delimiter)


class UploadRequest(Request):
    """Flask's request, with multipart uploads parsed fast and kept in memory, never spooled to a
    temporary file."""

    form_data_parser_class = MultipartFormParser


FORM, JSON = "multipart/form-data", "application/json"


def body_kind() -> str:
    """FORM or JSON: what the request's body is (else 415, saying what to send)."""
    if request.mimetype in (FORM, JSON):
        return request.mimetype
    raise UnsupportedMediaType(
        "send the image as a multipart/form-data upload (curl -F image=@photo.png) or as base64 "
        "in a JSON object (Content-Type: application/json), not "
        f"{request.mimetype or 'a body without a Content-Type'}")


def json_body() -> dict[str, Any]:
    """The request's JSON object, read once (with the same deadline as an upload) and checked."""
    if "json_body" not in g:
        try:
            data = read_body(request.stream)
        except RequestEntityTooLarge:
            data = None
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        if data is None or (request.content_length is None and len(data) >= limit):
            raise RequestEntityTooLarge(f"the request is over the {megabytes(limit)} limit")
        try:
            value = json.loads(data, parse_constant=_no_constant) if data.strip() else None
        except ValueError as exc:
            raise ConfigError(f"the body is not valid JSON: {exc}") from None
        except RecursionError:
            raise ConfigError("the body's JSON is nested too deeply") from None
        if not isinstance(value, dict):
            raise ConfigError("the body must be a JSON object ({\"image\": \"<base64>\", ...}), not "
                              + ("nothing" if value is None else type(value).__name__))
        g.json_body = value
    return g.json_body


def value(name: str) -> Any:
    """A parameter: from the JSON body (any JSON value) or the form (text), else the query
    string; None when absent."""
    if request.mimetype == JSON and request.method in ("POST", "PUT", "PATCH"):
        found = json_body().get(name)
        if found is not None:
            return found
    return request.values.get(name)


def text_value(name: str) -> str:
    """A scalar parameter as text ("" when absent): JSON numbers as they were written."""
    found = value(name)
    if found is None:
        return ""
    if isinstance(found, (dict, list)) or isinstance(found, bool):
        raise ConfigError(f"{name} must be a {'number or ' if name != 'label' else ''}text, "
                          f"not {json.dumps(found)[:40]}")
    return str(found).strip()


def image_bytes(field: str) -> tuple[bytes, str]:
    """The bytes of the image in `field` and a safe name for it (the client's file name,
    cleaned, used only as a label: nothing is ever read or written at that path)."""
    data, name, _ = image_list(field, one=True)[0]
    return data, name


def image_list(field: str, one: bool = False, most: int = 1) -> list[tuple[bytes, str, str]]:
    """The images in `field` (`one`: exactly one; else 1 to `most`), as (bytes, safe name, where
    for messages): the file parts of that name, or base64 text (one string, or a list of them)
    in a JSON body."""
    limit = current_app.config["SIAMESE_MAX_IMAGE_BYTES"]
    if body_kind() == JSON:
        given = json_body().get(field)
        if given is None:
            raise MissingFieldError(f"missing the image field '{field}' (base64 text)")
        if one and not isinstance(given, str):
            raise ConfigError(f"{field} must be an image as base64 text")
        if not one and not (isinstance(given, list) and all(isinstance(t, str) for t in given)):
            raise ConfigError(f"{field} must be a list of images, each as base64 text")
        names = [field] if one else [f"{field}[{i}]" for i in range(len(given))]
        found = [(_base64_image(text, where, limit), where, where)
                 for text, where in zip([given] if one else given, names)]
    else:
        uploads = request.files.getlist(field)
        if not uploads:
            if field in request.form:
                raise ConfigError(f"{field} must be a file upload (curl -F {field}=@photo.png), "
                                  "not a text field")
            raise MissingFieldError(f"missing the image file field '{field}'")
        found = []
        for i, upload in enumerate(uploads[:1] if one else uploads):
            data = upload.stream.read(limit + 1)
            where = field if one or len(uploads) == 1 else f"{field} #{i + 1}"
            if len(data) > limit:
                raise RequestEntityTooLarge(f"{where}: the image is over the {megabytes(limit)} limit")
            name = secure_filename(upload.filename or "") or field
            found.append((data, name, where if name == field else f"{where} ({name})"))
    if not one and not 1 <= len(found) <= most:
        raise ConfigError(f"{field}: send 1 to {most} images in one request, not {len(found)}")
    return found


def _base64_image(text: str, where: str, limit: int) -> bytes:
    """An image given as base64 text, or as a `data:...;base64,` URL."""
    if text.startswith("data:"):
        head, _, text = text.partition(",")
        if not head.endswith(";base64"):
            raise ConfigError(f"{where}: a data: URL must be base64 (data:image/png;base64,...)")
    if len(text) // 4 * 3 > limit + 3:
        raise RequestEntityTooLarge(f"{where}: the image is over the {megabytes(limit)} limit")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}: not base64 text (A-Z, a-z, 0-9, + and /, padded with =)"
                          ) from None
    if len(data) > limit:
        raise RequestEntityTooLarge(f"{where}: the image is over the {megabytes(limit)} limit")
    return data


def image(field: str) -> Image.Image:
    """The image uploaded in `field`, decoded and checked (empty, corrupt, truncated, too many
    pixels: `BadImageError`; not an image at all: `UnsupportedImageError`)."""
    return image_and_bytes(field)[0]


def image_and_bytes(field: str) -> tuple[Image.Image, bytes]:
    """`image`, shrunk to what the model needs, and the bytes it was decoded from."""
    data, _, where = image_list(field, one=True)[0]
    return decoded(data, where), data


def decoded(data: bytes, where: str) -> Image.Image:
    """An uploaded image decoded, checked, and shrunk to what the request's model needs."""
    return decode_shrunk(data, where, get_embedder().card.preprocessing)[0]


def int_param(name: str, default: int, low: int, high: int) -> int:
    text = text_value(name)
    return parse_int(name, text, Range(low, high, integer=True)) if text else default


def rule_params() -> dict[str, Optional[str]]:
    """The optional `operating_point` and `threshold` of a request, as given: the verdict
    (`encoder.verdict`) checks them, in one place for every caller."""
    return {name: text_value(name) or None for name in ("operating_point", "threshold")}


def fpir_param() -> Optional[str]:
    """The optional `fpir` (target false-positive identification rate), checked by the verdict."""
    return text_value("fpir") or None


def text_param(name: str, required: bool = False, max_length: int = MAX_LABEL_LENGTH
               ) -> Optional[str]:
    text = text_value(name)
    if not text:
        if required:
            raise MissingFieldError(f"missing the text field '{name}'")
        return None
    check_text(name, text, max_length)
    return text


def json_object_param(name: str) -> dict[str, Any]:
    """An object parameter: a JSON object in a JSON body, or its JSON text in a form field."""
    given = value(name)
    if isinstance(given, dict):
        return given
    text = given.strip() if isinstance(given, str) else json.dumps(given) if given is not None else ""
    if not text:
        return {}
    try:
        parsed = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} must be a JSON object, like {{\"sku\": \"A-1\"}}: "
                          f"{exc.msg[:1].lower()}{exc.msg[1:]} at line {exc.lineno}, column "
                          f"{exc.colno}") from None
    except ValueError as exc:  # NaN or Infinity
        raise ConfigError(f"{name} must be a JSON object: {exc}") from None
    except RecursionError:  # the parser recurses: ~1,000 levels exhaust Python's stack
        raise ConfigError(f"{name} is nested too deeply") from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name} must be a JSON object ({{...}}), not {type(parsed).__name__}")
    return parsed  # as metadata, the gallery checks it (`records.check_metadata`)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")
