"""CSRF tokens for the pages' forms, as a double-submit cookie: each browser gets a random token
in a `SameSite=Strict` cookie and in a hidden field of every form; a form POST must carry both,
equal. Another site can make a browser send the cookie with a cross-site POST only where
`SameSite` is not honoured, and it can never read it to put it in the form. No server-side
secret is needed, so every worker of every server accepts every other's tokens.

(The JSON API is for programs: its writes are guarded by the API key and the Origin check in
`api.py`, not by this.)
"""
from __future__ import annotations

import hmac
import secrets

from flask import Response, g, request
from werkzeug.exceptions import Forbidden

COOKIE = "siamese_csrf"
FIELD = "csrf_token"


def token() -> str:
    """This browser's token (from its cookie), or a new one, set in the cookie of the response."""
    if "csrf_token" not in g:
        sent = request.cookies.get(COOKIE, "")
        g.csrf_token = sent if _well_formed(sent) else secrets.token_urlsafe(32)
        g.csrf_new = g.csrf_token != sent
    return g.csrf_token


def check() -> None:
    """Refuse a form POST whose field and cookie do not carry the same token."""
    sent, field = request.cookies.get(COOKIE, ""), request.form.get(FIELD, "")
    if not (_well_formed(sent) and hmac.compare_digest(sent, field)):
        raise Forbidden("this form came from another site, or the page is older than its token "
                        "(cookies off?); reload the page and send it again")


def set_cookie(response: Response) -> Response:
    if g.get("csrf_new"):
        response.set_cookie(COOKIE, g.csrf_token, httponly=True, samesite="Strict",
                            secure=request.is_secure, path="/")
    return response


def _well_formed(value: str) -> bool:
    return 32 <= len(value) <= 64 and value.replace("-", "").replace("_", "").isalnum()
