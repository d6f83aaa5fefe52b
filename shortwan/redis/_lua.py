"""Server-side scripts: loaded once per connection pool, called by SHA, reloaded after a restart.

Every script reads the time from ``redis.call('TIME')``, so leases, windows and the token bucket
follow one clock, the server's, whichever machine a process runs on. Scripts build some key names
from their arguments (a spend window is chosen on the server's clock), which a single Redis server
allows; Redis Cluster is not supported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.typing import EncodableT

__all__ = ["CALENDAR", "PRELUDE", "Script", "run_bundled"]

# Calls per run of a bundle (see run_bundled): one run stays short, as the server serves nobody
# else meanwhile.
_BUNDLE: Final = 128

# Shared helpers, pasted in front of the scripts that need them.
PRELUDE = """
local function int(x) return string.format('%d', x) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function now_s()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# UTC calendar arithmetic on days since 1970-01-01 (the proleptic Gregorian civil calendar), so a
# per-day or per-month spend window turns at midnight UTC by the server's clock.
CALENDAR = """
local function civil(z)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return y, m, d
end
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = math.floor(y / 400)
  local yoe = y - era * 400
  local mp = m > 2 and m - 3 or m + 9
  local doy = math.floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
  return era * 146097 + doe - 719468
end
-- The name of the window holding unix second `s`.
local function window_at(kind, s)
  if kind == 'none' then return 'all' end
  local y, m, d = civil(math.floor(s / 86400))
  if kind == 'day' then return string.format('d%04d-%02d-%02d', y, m, d) end
  return string.format('m%04d-%02d', y, m)
end
-- The unix second a window named by window_at ends at (nil for 'all').
local function window_end(win)
  local kind = string.sub(win, 1, 1)
  if kind == 'd' then
    local y, m, d = string.match(win, '^d(%d+)-(%d+)-(%d+)$')
    return (days_from_civil(tonumber(y), tonumber(m), tonumber(d)) + 1) * 86400
  end
  if kind == 'm' then
    local y, m = string.match(win, '^m(%d+)-(%d+)$')
    y, m = tonumber(y), tonumber(m)
    if m == 12 then y, m = y + 1, 1 else m = m + 1 end
    return days_from_civil(y, m, 1) * 86400
  end
  return nil
end
"""


class Script:
    """One Lua script, called by its SHA and loaded again when the server has forgotten it."""

    __slots__ = ("body", "calendar", "sha", "text")

    _every: ClassVar[list[Script]] = []

    def __init__(self, body: str, *, calendar: bool = False) -> None:
        self.body = body
        self.calendar = calendar
        self.text = PRELUDE + (CALENDAR if calendar else "") + body
        self.sha = hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()
        Script._every.append(self)

    @classmethod
    async def load_all(cls, redis: Redis) -> None:
        """Load every script defined so far (all are module constants, made at import)."""
        for script in cls._every:
            await script.load(redis)

    async def load(self, redis: Redis) -> None:
        """Load the script into the server's script cache."""
        await redis.script_load(self.text)

    async def __call__(self, redis: Redis, keys: Sequence[str], args: Sequence[EncodableT]) -> Any:
        """Run the script; a server that lost its script cache (a restart) gets it again."""
        try:
            return await redis.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha, len(keys), *keys, *args)


Call = tuple[Script, Sequence[str], Sequence[EncodableT]]


# Each script of a bundle, as a function of its own keys and arguments. Each call is one
# argument: its fields (the script's index, the number of its keys, then the keys and the
# arguments) each written as its length in bytes, a colon and its bytes, so any bytes may travel.
# Each call runs in pcall, so an error answers that call alone, as it would have in a run of its
# own; a script that returns nothing answers nil, which an array can only hold as false. The
# answers come back as one string (see _decode).
_BUNDLE_RUN = """
local function fields(s)
  local out, pos, n = {}, 1, 0
  while pos <= #s do
    local colon = string.find(s, ':', pos, true)
    local size = tonumber(string.sub(s, pos, colon - 1))
    n = n + 1
    out[n] = string.sub(s, colon + 1, colon + size)
    pos = colon + size + 1
  end
  return out, n
end
local out = {}
for c = 1, #ARGV do
  local f, n = fields(ARGV[c])
  local nk = tonumber(f[2])
  local keys, args = {}, {}
  for k = 1, nk do keys[k] = f[2 + k] end
  for k = 3 + nk, n do args[k - 2 - nk] = f[k] end
  local ok, reply = pcall(fns[tonumber(f[1])], keys, args)
  if not ok then
    if type(reply) ~= 'table' or not reply.err then reply = {err = tostring(reply)} end
  elseif reply == nil then
    reply = false
  end
  out[c] = reply
end
-- The answers go back as one string of typed fields (see _decode): reading one string costs the
-- client far less than reading an array, element by element.
local parts = {}
local function enc(v)
  local t = type(v)
  if t == 'string' then
    parts[#parts + 1] = 's' .. #v .. ':' .. v
  elseif t == 'number' then
    parts[#parts + 1] = 'i' .. string.format('%d', v) .. ':'
  elseif t == 'boolean' then
    parts[#parts + 1] = v and 'i1:' or 'n'
  elseif t == 'table' then
    if v.err then
      local e = tostring(v.err)
      parts[#parts + 1] = 'e' .. #e .. ':' .. e
    elseif v.ok then
      local s = tostring(v.ok)
      parts[#parts + 1] = 's' .. #s .. ':' .. s
    else
      parts[#parts + 1] = 'a' .. #v .. ':'
      for i = 1, #v do enc(v[i]) end
    end
  else
    parts[#parts + 1] = 'n'
  end
end
enc(out)
return table.concat(parts)
"""

_bundles: dict[tuple[Script, ...], Script] = {}


def _bundle(scripts: tuple[Script, ...]) -> Script:
    """Return the script that runs any sequence of calls to ``scripts`` (made once, kept)."""
    found = _bundles.get(scripts)
    if found is None:
        functions = "".join(
            f"fns[{n}] = function(KEYS, ARGV)\n{script.body}\nend\n"
            for n, script in enumerate(scripts, 1)
        )
        found = _bundles[scripts] = Script(
            "local fns = {}\n" + functions + _BUNDLE_RUN,
            calendar=any(script.calendar for script in scripts),
        )
    return found


def _field(value: EncodableT) -> bytes:
    # As redis-py encodes an argument: text as UTF-8, numbers as their repr. Text first: keys,
    # ids and amounts are the usual arguments.
    if isinstance(value, str):
        data = value.encode()
    elif type(value) is int:
        data = b"%d" % value
    elif isinstance(value, bytes):
        data = value
    elif isinstance(value, int | float) and not isinstance(value, bool):
        data = repr(value).encode()
    elif isinstance(value, memoryview):
        data = value.tobytes()
    else:
        raise DataError(f"a script argument must be text, bytes or a number, not {value!r}")
    return b"%d:%s" % (len(data), data)


def _body(keys: Sequence[str], values: Sequence[EncodableT]) -> bytes:
    """Return a call's fields after the script's index: the number of keys, keys, arguments."""
    count = str(len(keys))
    return b"".join([b"%d:%s" % (len(count), count.encode()), *map(_field, (*keys, *values))])


def _runs(calls: list[tuple[Script, bytes]]) -> list[tuple[Script, list[EncodableT]]]:
    """Split packed calls into runs of at most _BUNDLE, each with the bundle of its scripts."""
    runs: list[tuple[Script, list[EncodableT]]] = []
    for start in range(0, len(calls), _BUNDLE):
        chunk = calls[start : start + _BUNDLE]
        # In one order whatever the calls' order, so a few bundles serve every mix of calls.
        scripts = tuple(sorted({script for script, _ in chunk}, key=lambda x: x.sha))
        index = {script: b"%d:%d" % (len(str(n)), n) for n, script in enumerate(scripts, 1)}
        runs.append((_bundle(scripts), [index[script] + body for script, body in chunk]))
    return runs


def _decode(data: bytes) -> Any:
    """Read the answers of a bundle, as redis-py would read the same values in an array reply.

    Each value is a letter, then: ``s<size>:<bytes>`` text, ``i<number>:`` a number,
    ``e<size>:<message>`` an error, ``a<count>:`` an array of the values that follow, ``n`` nil.

    Raises:
        ValueError: the string is not in that form.
    """
    value, end = _value(data, 0)
    if end != len(data):
        raise ValueError(f"{len(data) - end} bytes after a bundle's answers")
    return value


def _value(data: bytes, pos: int) -> tuple[Any, int]:
    kind = data[pos]
    if kind == 0x6E:  # n
        return None, pos + 1
    colon = data.index(b":", pos)
    number = int(data[pos + 1 : colon])
    start = colon + 1
    if kind == 0x73:  # s
        end = start + number
        if end > len(data):
            raise ValueError("a bundle's answer is cut short")
        return data[start:end], end
    if kind == 0x69:  # i
        return number, start
    if kind == 0x61:  # a
        items = []
        for _ in range(number):
            item, start = _value(data, start)
            items.append(item)
        return items, start
    if kind == 0x65:  # e
        end = start + number
        message = data[start:end].decode(errors="replace")
        return ResponseError(message.removeprefix("ERR ")), end  # as redis-py reads it
    raise ValueError(f"a bundle's answer has a value of unknown kind {chr(kind)!r}")


async def _evalsha_all(
    conn: AbstractConnection, runs: list[tuple[Script, list[EncodableT]]]
) -> list[Any]:
    """Send one EVALSHA per run in one write on ``conn``; return each reply, errors as values."""
    await conn.send_packed_command(
        conn.pack_commands([("EVALSHA", script.sha, 0, *args) for script, args in runs])
    )
    replies: list[Any] = []
    for _ in runs:
        try:
            replies.append(await conn.read_response())
        except ResponseError as exc:  # read in full: the next reply follows it on the wire
            replies.append(exc)
    return replies


async def run_bundled(conn: AbstractConnection, calls: Sequence[Call]) -> list[Any]:
    """Run every ``(script, keys, args)`` in order, in one round trip; return each reply.

    The calls go as a few runs of one script that runs each of them in turn (a bundle), so the
    client writes and reads a few commands, not one per call: most of what a call to Redis costs
    the client is per command. They go on ``conn``, a connection of the caller's own, which
    spares each round trip the pool's checks. Keys travel as arguments, which a single server
    allows. A call refused with an error (or whose arguments cannot be sent) is answered by that
    error in its place, so one caller's trouble is not everyone's. A run refused because the
    server had lost its script (a restart) did not run, and is sent again once it is loaded.
    """
    replies: list[Any] = [None] * len(calls)
    packed: list[tuple[Script, bytes]] = []
    sent: list[int] = []
    for i, (script, keys, values) in enumerate(calls):
        try:
            packed.append((script, _body(keys, values)))
        except DataError as exc:
            replies[i] = exc
        else:
            sent.append(i)
    runs = _runs(packed)
    results: list[Any] = [None] * len(runs)
    todo = list(range(len(runs)))
    for attempt in (1, 2):
        if not todo:
            break
        got = await _evalsha_all(conn, [runs[i] for i in todo])
        lost = []
        for i, result in zip(todo, got, strict=True):
            if attempt == 1 and isinstance(result, NoScriptError):
                lost.append(i)  # refused before it ran: sent again once loaded
            else:
                results[i] = result
        for i in lost:
            await conn.send_command("SCRIPT", "LOAD", runs[i][0].text)
            await conn.read_response()
        todo = lost
    for (_script, args), got_back, start in zip(
        runs, results, range(0, len(sent), _BUNDLE), strict=True
    ):
        size = len(args)
        result = got_back
        if isinstance(got_back, bytes):
            try:
                result = _decode(got_back)
            except (ValueError, IndexError) as exc:
                result = ResponseError(f"a bundled run answered in a form not understood: {exc}")
        answers = result
        if not (isinstance(result, list) and len(result) == size):
            # The whole run was refused (or answered in a shape no run gives).
            error = result if isinstance(result, ResponseError) else None
            answers = [error or ResponseError(f"a bundled run answered {result!r:.80}")] * size
        for i, reply in zip(sent[start : start + size], answers, strict=True):
            replies[i] = reply
    return replies
