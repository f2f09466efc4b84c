"""JSON bodies with a nesting limit, checked before anything is decoded.

``json.loads`` recurses once per level of nesting, so ``[[[[...]]]]`` 100,000 deep
raises RecursionError (a 500) inside the decoder. No request of this API nests deeper
than a handful of levels (a schema, an evaluation's curves), so anything past
``MAX_JSON_DEPTH`` is refused with a 400 after a cheap scan of its brackets: strings are
skipped, then the running depth of the remaining brackets is computed in one pass.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

import numpy as np
from rest_framework import parsers
from rest_framework.exceptions import ParseError

MAX_JSON_DEPTH = 32

# A JSON string (escapes included), written without nested repetition so a long string
# costs one linear pass.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_NOT_MARKS = bytes(b for b in range(256) if b not in b'[]{}"\\')
# Opening brackets +1, closing -1, as a byte lookup table.
_STEP = np.zeros(256, dtype=np.int32)
_STEP[[ord("["), ord("{")]] = 1
_STEP[[ord("]"), ord("}")]] = -1


class JSONTooDeep(ValueError):
    """A JSON document nested deeper than ``MAX_JSON_DEPTH``."""


def json_depth(raw: bytes | str) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (0 for a scalar).

    Exact for valid JSON; for invalid JSON a number the decoder will refuse anyway.
    """
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    marks = data.translate(None, _NOT_MARKS)  # brackets, quotes and backslashes only
    if b"\\" not in marks:
        # No escapes (a batch of records, say): every quote opens or closes a string, so a
        # bracket is inside one when an odd number of quotes precede it. Array operations
        # on the marks instead of a pattern over every byte (~10x faster).
        codes = np.frombuffer(marks, dtype=np.uint8)
        steps = np.where(np.cumsum(codes == ord('"')) & 1, 0, _STEP[codes])
        return int(np.cumsum(steps).max()) if len(steps) else 0
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    return int(np.cumsum(_STEP[np.frombuffer(brackets, dtype=np.uint8)]).max())


def check_depth(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> None:
    data = raw.encode() if isinstance(raw, str) else raw
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # too few brackets to nest that deep: most requests stop here
    if json_depth(data) > limit:
        raise JSONTooDeep(f"JSON nested deeper than {limit} levels")


def loads(raw: bytes | str, limit: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` for text from a request (e.g. a JSON field inside a multipart form);
    raises ValueError (``JSONTooDeep`` when nested too deeply)."""
    check_depth(raw, limit)
    return json.loads(raw)


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser, refusing documents nested deeper than ``MAX_JSON_DEPTH`` (400)."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            check_depth(raw)
        except JSONTooDeep as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        return super().parse(io.BytesIO(raw), media_type, parser_context)
