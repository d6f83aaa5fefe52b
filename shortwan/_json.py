"""JSON on the wire: orjson when the speed extra is installed, else the standard library.

Request bodies are written, and answers and callback bodies read, through :func:`dumps` and
:func:`loads` of this module (read as module attributes, so :func:`backend` can switch them).
orjson is several times faster, and where it would read a body differently from the standard
library, the body is read by the standard library instead, so the two paths agree on every body:

- orjson refuses what the standard library takes leniently (``NaN``, ``Infinity``, numbers past
  a double's range, lone surrogates, a byte order mark, UTF-16 and UTF-32) and words its errors
  its own way: every body orjson refuses is read again by the standard library, whose value or
  error (type and message) is then the answer;
- orjson reads integers past 64 bits as floats: a body with a run of 19 digits or more is read by
  the standard library, which keeps them exact;
- orjson's nesting limit (1024) is not the standard library's (the interpreter's recursion
  limit): a body with more than ``_MAX_BRACKETS`` opening brackets is read by the standard
  library.

Writing: orjson writes non-ASCII text as UTF-8 where the standard library escapes it, the same
JSON value either way; what orjson cannot write (lone surrogates, integers past 64 bits) is
written by the standard library. One difference is left: orjson writes NaN and the infinities as
``null``, the standard library as ``NaN``/``Infinity`` (which is not JSON). No request body holds
a float, so nothing the client sends differs by it (tests/test_speed.py checks all of this).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Final, Literal

try:  # the speed extra; the core never needs it
    import orjson
except ImportError:  # pragma: no cover - exercised by the test that blocks the speed extra
    _ORJSON = False
else:
    _ORJSON = True

__all__ = ["backend", "dumps", "loads", "orjson_available"]

# Runs of this many digits may be integers past 64 bits, which orjson would read as floats.
_LONG_NUMBER: Final = b"0" * 19
# More opening brackets than this could nest deeper than one of the two parsers allows.
_MAX_BRACKETS: Final = 256
# Maps every digit to "0" and both opening brackets to "[", everything else to a space: one
# pass in C finds both reasons to hand a body to the standard library.
_SHAPE: Final = bytes(
    ord("0") if i in b"0123456789" else ord("[") if i in b"[{" else ord(" ") for i in range(256)
)


def orjson_available() -> bool:
    """Return whether orjson could be imported."""
    return _ORJSON


# json.dumps with any option set builds a new encoder per call; one made here serves them all.
_ENCODER: Final = json.JSONEncoder(separators=(",", ":"))
# The C encoder json makes on each call when it can, made once. Without markers: what is
# written is the client's own bodies, which never refer to themselves.
_C_ENCODE: Final = (
    None
    if c_make_encoder is None
    else c_make_encoder(
        None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, True
    )
)


def stdlib_dumps(obj: Any) -> bytes:
    """Write ``obj`` as compact JSON with the standard library."""
    if _C_ENCODE is None:  # pragma: no cover - CPython has the C encoder
        return _ENCODER.encode(obj).encode("ascii")
    return "".join(_C_ENCODE(obj, 0)).encode("ascii")


def stdlib_loads(raw: bytes) -> Any:
    """Read a JSON body with the standard library."""
    if raw[:1] == b"{" and raw[1:2] != b"\x00":
        # What json.loads(raw) would do, without its guess of the encoding (a Python function
        # per call): a body opening with "{" and no NUL after it can only be UTF-8 to it.
        return json.loads(raw.decode("utf-8", "surrogatepass"))
    return json.loads(raw)


def orjson_dumps(obj: Any) -> bytes:
    """Write ``obj`` as compact JSON with orjson, or the standard library where orjson cannot."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        pass
    return stdlib_dumps(obj)


def orjson_loads(raw: bytes) -> Any:
    """Read a JSON body with orjson where it agrees with the standard library, else with it."""
    shape = raw.translate(_SHAPE)
    if _LONG_NUMBER in shape or shape.count(b"[") > _MAX_BRACKETS:
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Outside the handler, so the standard library's own error carries no orjson context.
    return json.loads(raw)


dumps: Callable[[Any], bytes] = stdlib_dumps
loads: Callable[[bytes], Any] = stdlib_loads


def _use(new_dumps: Callable[[Any], bytes], new_loads: Callable[[bytes], Any]) -> None:
    global dumps, loads
    dumps, loads = new_dumps, new_loads


@contextmanager
def backend(name: Literal["orjson", "stdlib"]) -> Iterator[None]:
    """Use ``name``'s encoder and decoder inside the block (benchmarks and tests compare them)."""
    if name == "orjson" and not _ORJSON:
        raise RuntimeError("orjson is not installed (pip install 'shortwan[speed]')")
    before = dumps, loads
    _use(*((orjson_dumps, orjson_loads) if name == "orjson" else (stdlib_dumps, stdlib_loads)))
    try:
        yield
    finally:
        _use(*before)


if _ORJSON:
    _use(orjson_dumps, orjson_loads)
