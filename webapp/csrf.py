"""CSRF protection for the pages' forms: Flask-WTF's tokens, bound to the browser's session and
signed with the server's secret (`access.server_secret`), and the same-site check on the
request's `Origin` (or `Referer`), as for the API's writes.

A token is a random value kept in the signed session cookie, and, signed and dated, in a hidden
field of every form; a form POST must carry a field that matches this browser's session and is
younger than a sign-in lasts. Another site can neither read the field nor make one that matches
(a client-chosen value was accepted when the token was a plain double-submit cookie).

(The JSON API is for programs: its writes are guarded by the API key and the Origin check in
`access.py`, not by this.)
"""
from __future__ import annotations

from flask import Flask, request
from flask_wtf.csrf import generate_csrf, validate_csrf
from werkzeug.exceptions import Forbidden
from wtforms.validators import ValidationError

from . import access

FIELD = "csrf_token"


def configure(app: Flask) -> None:
    app.config.update(WTF_CSRF_FIELD_NAME=FIELD,
                      WTF_CSRF_TIME_LIMIT=access.SESSION_HOURS * 3600)


def token() -> str:
    """This browser's signed token for a form (made, and kept in its session, on first use)."""
    return generate_csrf()


def check() -> None:
    """Refuse a form POST from another site's page, or without this session's token."""
    access.same_origin()
    try:
        validate_csrf(request.form.get(FIELD))
    except ValidationError as exc:
        raise Forbidden(f"{str(exc).rstrip('.').lower().replace('csrf', 'form')}: this form came "
                        "from another site, or the page is older than its token (cookies off?); "
                        "reload the page and send it again") from None
