"""The JSON of every answer (`app.json`): orjson, with Flask's own encoder as the fallback.

A search's answer (ten matches) took Flask's encoder 43 us and takes orjson 3.4 us: 3% of a
search's time on the server (docs/results.md). Text beyond ASCII is written as UTF-8, where Flask's
encoder wrote \\u escapes (the same JSON); what orjson refuses (an integer over 64 bits in stored
metadata, an object only Flask's encoder knows) and indented answers are written by Flask's
encoder, in UTF-8 too."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider

# Dates and dataclasses go to Flask's `default`, so they read as they always did (an HTTP date,
# not orjson's RFC 3339).
_OPTIONS = (orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)


class JSONProvider(DefaultJSONProvider):
    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        indent = (self.compact is None and self._app.debug) or self.compact is False
        if not indent:
            try:
                body = orjson.dumps(obj, default=self.default, option=_OPTIONS)
                return self._app.response_class(body, mimetype=self.mimetype)
            except TypeError:  # orjson.JSONEncodeError is one
                pass
        layout = {"indent": 2} if indent else {"separators": (",", ":")}
        # `dumps` itself stays ASCII: templates' `tojson` puts its output inside pages.
        return self._app.response_class(f"{self.dumps(obj, ensure_ascii=False, **layout)}\n",
                                        mimetype=self.mimetype)
