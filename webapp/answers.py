"""The JSON of every answer (`app.json`): orjson, with Flask's own encoder as the fallback.

A search's answer (ten matches) took Flask's encoder 43 us and takes orjson 3.4 us: 3% of a
search's time on the server (docs/results.md). orjson writes UTF-8 where Flask's encoder wrote
\\u escapes (both are the same JSON); what orjson refuses (an integer over 64 bits in stored
metadata, an object only Flask's encoder knows) is written by Flask's, as before."""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response
from flask.json.provider import DefaultJSONProvider, _default

# Dates and dataclasses go to Flask's `_default`, so they read as they always did (an HTTP date,
# not orjson's RFC 3339); a dict with other than text keys is Flask's encoder's to write.
_OPTIONS = (orjson.OPT_APPEND_NEWLINE | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS)


class JSONProvider(DefaultJSONProvider):
    sort_keys = False

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        if (self.compact is None and self._app.debug) or self.compact is False:
            return super().response(obj)  # indented, for people reading it
        try:
            body = orjson.dumps(obj, default=_default, option=_OPTIONS)
        except (orjson.JSONEncodeError, TypeError):
            return super().response(obj)
        return self._app.response_class(body, mimetype=self.mimetype)
