"""The books of a shared spend counter, as Lua scripts that keep them consistent on the server.

A counter ``{namespace}:spend:{name}`` has its settings in ``...:conf`` (limit in micro-dollars,
window kind), and per window (``all``, ``d2025-06-01`` or ``m2025-06``, by the server's UTC clock):

- the hash ``...:{window}`` with ``spent``, ``reserved`` and ``l:<lease id>`` = the micro-dollars
  each live reservation holds;
- the sorted set ``...:{window}:leases``, each lease id scored by its expiry (server milliseconds).

``...:done:<operation id>`` marks a settle, release or refund as applied, for a week, so that one
sent again after a lost reply changes nothing. A window's books expire two days after it ends.
Every script clears a few lapsed leases of the window it touches before it reads the figures.
"""

from __future__ import annotations

from typing import Final

from ._lua import Script

__all__ = ["APPLY", "OPEN", "READ", "RENEW", "RESERVE"]

_DONE_TTL: Final = 7 * 24 * 3600
# Past its end a window's books are kept this long, for late settles and for reading.
_WINDOW_GRACE: Final = 2 * 24 * 3600
_SWEEP: Final = 64  # expired leases cleared per call, bounding the script's time


# Lua helpers for one counter: its books are the hash {prefix}:{window} (fields spent, reserved,
# l:<lease id> = the lease's micro-dollars) and the sorted set {prefix}:{window}:leases (lease id
# scored by its expiry in server milliseconds).
_BOOKS = (
    f"local SWEEP, GRACE, DONE_TTL = {_SWEEP}, {_WINDOW_GRACE}, {_DONE_TTL}\n"
    + """
local prefix = ARGV[1]
local function books(win) return prefix .. ':' .. win, prefix .. ':' .. win .. ':leases' end
-- Take a lease off the books; return the micro-dollars it held (nil: it was not there).
local function drop(book, leases, id)
  local amount = redis.call('HGET', book, 'l:' .. id)
  if amount then
    redis.call('HINCRBY', book, 'reserved', int(-tonumber(amount)))  -- '-0' is refused
    redis.call('HDEL', book, 'l:' .. id)
  end
  redis.call('ZREM', leases, id)
  return amount
end
local function sweep(book, leases, now)
  local gone = redis.call('ZRANGEBYSCORE', leases, '-inf', now, 'LIMIT', 0, SWEEP)
  for _, id in ipairs(gone) do drop(book, leases, id) end
end
local function keep(book, leases, win)
  local ends = window_end(win)
  if ends then
    redis.call('EXPIREAT', book, ends + GRACE)
    redis.call('EXPIREAT', leases, ends + GRACE)
  end
end
local function figures(book)
  local limit = redis.call('HGET', prefix .. ':conf', 'limit') or '-1'
  return {tonumber(redis.call('HGET', book, 'spent') or '0'),
    tonumber(redis.call('HGET', book, 'reserved') or '0'), tonumber(limit)}
end
-- A script's answer, one line of text (an array costs the client more to read): whether it
-- did what was asked, the window, then spent, reserved and the limit in micro-dollars.
local function answer(ok, win, f)
  return ok .. ' ' .. win .. ' ' .. int(f[1]) .. ' ' .. int(f[2]) .. ' ' .. int(f[3])
end
local function current()
  local kind = redis.call('HGET', prefix .. ':conf', 'window') or ARGV[3]
  return window_at(kind, math.floor(now_ms() / 1000))
end
-- The books of window `win` ('' = the current one), and whether operation `op` is new there.
local function operation(win, op)
  if win == '' then win = current() end
  local book, leases = books(win)
  local new = redis.call('SET', prefix .. ':done:' .. op, '1', 'NX', 'EX', DONE_TTL)
  return win, book, leases, new
end
"""
)

# ARGV: prefix, limit, window kind. Writes the settings of a new counter; returns the shared ones.
OPEN = Script(
    """
local conf = ARGV[1] .. ':conf'
if ARGV[2] ~= '' and redis.call('HSETNX', conf, 'limit', ARGV[2]) == 1 then
  redis.call('HSET', conf, 'window', ARGV[3])
end
return redis.call('HMGET', conf, 'limit', 'window')
"""
)

# ARGV: prefix, limit (used when the settings are gone), window kind, lease ms, then (amount,
# lease id) for each reservation asked for at once. Each is granted in turn while it fits under
# the cap; the answer's first word has a 1 (granted) or a 0 for each. A lease the books already
# hold (the same call sent again after its answer was lost) is granted without counting twice.
RESERVE = Script(
    _BOOKS
    + """
local conf = prefix .. ':conf'
if redis.call('HSETNX', conf, 'limit', ARGV[2]) == 1 then
  redis.call('HSET', conf, 'window', ARGV[3])
end
if redis.call('HGET', conf, 'window') ~= ARGV[3] then
  return redis.error_reply('shortwan: this spend counter has another window')
end
local now = now_ms()
local win = window_at(ARGV[3], math.floor(now / 1000))
local book, leases = books(win)
sweep(book, leases, now)
local f = figures(book)
local reserved, granted = f[2], {}
for i = 5, #ARGV, 2 do
  local amount = tonumber(ARGV[i])
  if redis.call('HEXISTS', book, 'l:' .. ARGV[i + 1]) == 1 then
    granted[#granted + 1] = '1'  -- sent again after a lost answer: held once
  elseif f[1] + reserved + amount > f[3] then
    granted[#granted + 1] = '0'
  else
    reserved = reserved + amount
    redis.call('HSET', book, 'l:' .. ARGV[i + 1], ARGV[i])
    redis.call('ZADD', leases, now + tonumber(ARGV[4]), ARGV[i + 1])
    granted[#granted + 1] = '1'
  end
end
if reserved ~= f[2] then redis.call('HINCRBY', book, 'reserved', int(reserved - f[2])) end
keep(book, leases, win)
return answer(table.concat(granted), win, {f[1], reserved, f[3]})
""",
    calendar=True,
)

# ARGV: prefix, (unused), kind, then five for each operation, applied in order: what ('settle' or
# 'refund'), window ('' = the current one), operation id, micro-dollars, and for a settle the
# charge in micro-dollars ('' = the reservation, 'release' = nothing). A settle's operation id is
# its lease's id: a reservation is settled or released once. Answers one line per operation.
APPLY = Script(
    _BOOKS
    + """
local function settle(w, op, micro, charge)
  local win, book, leases, new = operation(w, op)
  if not new then return answer(0, win, figures(book)) end
  local held = drop(book, leases, op)
  if charge == '' then charge = held or micro end
  if charge ~= 'release' and tonumber(charge) > 0 then
    redis.call('HINCRBY', book, 'spent', charge)
  end
  keep(book, leases, win)
  sweep(book, leases, now_ms())
  return answer(1, win, figures(book))
end
local function refund(w, op, micro)
  local win, book, leases, new = operation(w, op)
  if not new then return answer(0, win, figures(book)) end
  if redis.call('HINCRBY', book, 'spent', int(-tonumber(micro))) < 0 then
    redis.call('HSET', book, 'spent', '0')
  end
  keep(book, leases, win)
  return answer(1, win, figures(book))
end
local lines = {}
for i = 4, #ARGV, 5 do
  if ARGV[i] == 'settle' then
    lines[#lines + 1] = settle(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  else
    lines[#lines + 1] = refund(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
return table.concat(lines, '\\n')
""",
    calendar=True,
)

# ARGV: prefix, lease ms, kind, then (window, lease id, micro) for each lease. A lease the server
# no longer has (it lapsed while this process could not reach Redis, or the server restarted
# empty) is held again: its create is still under way, so its money is still committed.
RENEW = Script(
    _BOOKS
    + """
local now = now_ms()
local again = 0
for i = 4, #ARGV, 3 do
  local win, id, amount = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local book, leases = books(win)
  if redis.call('EXISTS', prefix .. ':done:' .. id) == 0 then
    if redis.call('ZADD', leases, 'XX', 'CH', now + tonumber(ARGV[2]), id) == 0
        and not redis.call('ZSCORE', leases, id) then
      redis.call('HINCRBY', book, 'reserved', amount)
      redis.call('HSET', book, 'l:' .. id, amount)
      redis.call('ZADD', leases, now + tonumber(ARGV[2]), id)
      again = again + 1
    end
    keep(book, leases, win)
  end
end
return again
""",
    calendar=True,
)

# ARGV: prefix, (unused), kind.
READ = Script(
    _BOOKS
    + """
local win = current()
local book, leases = books(win)
sweep(book, leases, now_ms())
return answer(1, win, figures(book))
""",
    calendar=True,
)
