"""What a callback is made of: its token's digest, its body's job data, and the limits on both.

Shared by the receiver, its HTTP mounts and the Redis token registry (which stores digests only).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from . import _json
from ._models import job_id_problem

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_PATH_PREFIX",
    "TOKEN_BYTES",
    "UNCERTAIN_TTL",
    "digest",
    "job_id_of",
    "payload",
]

DEFAULT_PATH_PREFIX: Final = "/shortwan/callbacks"
DEFAULT_MAX_BODY: Final = 1024 * 1024
TOKEN_BYTES: Final = 32  # 256 bits
UNCERTAIN_TTL: Final = 48 * 3600.0
"""How long a create whose answer was lost keeps listening for its callback."""

ACCEPTED: Final = b'{"ok":true}'
NOT_FOUND: Final = b'{"error":"unknown callback"}'
TOO_LARGE: Final = b'{"error":"body too large"}'
UNAVAILABLE: Final = b'{"error":"callback registry unavailable, try again"}'


def digest(token: str) -> bytes:
    """Return the SHA-256 digest a token is looked up by, here and in a shared registry."""
    # Tokens are looked up by their hash, then compared in constant time: neither the lookup
    # nor the comparison leaks how much of a guessed token was right.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def payload(body: bytes) -> dict[str, Any] | None:
    """Return the job data of a callback body: an envelope's ``data``, or a bare object."""
    try:
        parsed = _json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    data = parsed.get("data")
    if isinstance(data, dict) and ("code" in parsed or "status" not in parsed):
        return data
    return parsed


def job_id_of(data: dict[str, Any] | None) -> str | None:
    """Return the job id a callback's data names, if it is a plausible one."""
    if data is None:
        return None
    for name in ("id", "job_id"):
        value = data.get(name)
        if isinstance(value, str) and len(value) <= 256 and job_id_problem(value) is None:
            return value
    return None
