"""The books of a shared spend counter, as Lua scripts that keep them consistent on the server.

A counter ``{namespace}:spend:{name}`` has its settings in ``...:conf`` (limit in micro-dollars,
window kind), and per window (``all``, ``d2025-06-01`` or ``m2025-06``, by the server's UTC clock):

- the hash ``...:{window}`` with ``spent``, ``reserved`` and ``l:<pool id>`` = the micro-dollars
  the pool of one process holds: room for its creates under way, and a little for those to come;
- the sorted set ``...:{window}:leases``, each pool id scored by its expiry (server milliseconds).

``...:done:<operation id>`` marks a draw, settle or refund as applied, for a week, so that one sent
again after a lost reply changes nothing; for a grow it keeps the answer, for an hour. A window's
books expire two days after it ends.
Every script clears a few lapsed leases of the window it touches before it reads the figures.
"""

from __future__ import annotations

from typing import Final

from ._lua import Script

__all__ = ["APPLY", "GROW", "OPEN", "READ", "RENEW"]

_DONE_TTL: Final = 7 * 24 * 3600
# Past its end a window's books are kept this long, for late settles and for reading.
_WINDOW_GRACE: Final = 2 * 24 * 3600
_SWEEP: Final = 64  # expired leases cleared per call, bounding the script's time
# How long a grow's answer is kept for the same grow sent again (after a lost reply).
_GROW_TTL: Final = 3600


# Lua helpers for one counter: its books are the hash {prefix}:{window} (fields spent, reserved,
# l:<lease id> = the lease's micro-dollars) and the sorted set {prefix}:{window}:leases (lease id
# scored by its expiry in server milliseconds).
_BOOKS = (
    f"local SWEEP, GRACE = {_SWEEP}, {_WINDOW_GRACE}\n"
    f"local DONE_TTL, GROW_TTL = {_DONE_TTL}, {_GROW_TTL}\n"
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

# ARGV: prefix, limit (used when the settings are gone), window kind, lease ms, pool id, grow id,
# the pool's window ('' for a new pool), base, borrowed, ahead, then the amount of each create
# asking at once. A process holds room for its creates as one lease of its own, its pool
# (l:<pool id>); this call tops it up. ``borrowed`` is room of the pool not yet handed out that
# the process lends to these creates, and ``base`` what the pool holds for creates under way and
# settles not yet applied: if the lease lapsed (an outage longer than the lease), base is held
# again, as RENEW would, and the borrowed room is gone. Each create is granted in turn while it
# fits under the cap; if all are, up to ``ahead`` more is held for the creates to come. The
# answer: g and a 1 or a 0 for each create, the room held ahead, whether the lease had lapsed, the
# milliseconds until the window ends (-1: it never does), then the window and its figures. A
# grow sent again after its answer was lost answers the same and changes nothing.
GROW = Script(
    _BOOKS
    + """
local conf = prefix .. ':conf'
if redis.call('HSETNX', conf, 'limit', ARGV[2]) == 1 then
  redis.call('HSET', conf, 'window', ARGV[3])
end
if redis.call('HGET', conf, 'window') ~= ARGV[3] then
  return redis.error_reply('shortwan: this spend counter has another window')
end
local done = prefix .. ':done:' .. ARGV[6]
local before = redis.call('GET', done)
if before then return before end
local now = now_ms()
local win = window_at(ARGV[3], math.floor(now / 1000))
local book, leases = books(win)
sweep(book, leases, now)
local f = figures(book)
local field = 'l:' .. ARGV[5]
local base, borrowed, ahead = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local had = tonumber(redis.call('HGET', book, field) or '-1')
local lapsed = 0
local reserved = f[2]
if win ~= ARGV[7] then
  borrowed = 0  -- the pool's room is in a window that has ended: none of it counts here
  had = math.max(had, 0)
elseif had < 0 then
  lapsed = 1  -- the pool's lease lapsed (or its books are gone): hold its creates' room again
  borrowed = 0
  had = base
  reserved = reserved + base
end
local room = f[3] - f[1] - reserved + borrowed
local granted, used, refused = {}, 0, false
for i = 11, #ARGV do
  local amount = tonumber(ARGV[i])
  if amount <= room then
    room = room - amount
    used = used + amount
    granted[#granted + 1] = '1'
  else
    refused = true
    granted[#granted + 1] = '0'
  end
end
local extra = 0
if not refused then extra = math.max(0, math.min(ahead, room)) end
local held = had - borrowed + used + extra
reserved = reserved - borrowed + used + extra
if reserved ~= f[2] then redis.call('HINCRBY', book, 'reserved', int(reserved - f[2])) end
redis.call('HSET', book, field, int(held))
redis.call('ZADD', leases, now + tonumber(ARGV[4]), ARGV[5])
keep(book, leases, win)
local ends = window_end(win)
local left = -1
if ends then left = ends * 1000 - now end
local reply = 'g' .. table.concat(granted) .. ' ' .. int(extra) .. ' ' .. lapsed .. ' ' .. int(left)
  .. ' ' .. answer(1, win, {f[1], reserved, f[3]})
redis.call('SET', done, reply, 'EX', GROW_TTL)
return reply
""",
    calendar=True,
)

# ARGV: prefix, (unused), kind, then five for each operation, applied in order: what ('draw',
# 'settle' or 'refund'), window ('' = the current one), operation id, micro-dollars, and a charge
# in micro-dollars. A draw takes its micro-dollars off a pool (its operation id is
# ``<pool id>:<n>``) and spends the charge: the settles of many creates, and room given back, as
# one; -1 drops the pool's lease, whatever it holds. A settle (of a reservation that no pool of
# this counter holds) spends the charge. Answers one line per operation.
APPLY = Script(
    _BOOKS
    + """
local function draw(w, op, micro, charge)
  local win, book, leases, new = operation(w, op)
  if not new then return answer(0, win, figures(book)) end
  local pool = string.match(op, '^([^:]+):')
  local field = 'l:' .. pool
  local held = tonumber(redis.call('HGET', book, field) or '0')
  local take = tonumber(micro)
  if take < 0 or take > held then take = held end
  if take > 0 then redis.call('HINCRBY', book, 'reserved', int(-take)) end
  if tonumber(micro) < 0 then
    redis.call('HDEL', book, field)  -- the pool is done: its lease goes
    redis.call('ZREM', leases, pool)
  elseif take > 0 then
    -- A pool drawn to nothing keeps its lease (a missing one means it lapsed: see GROW).
    redis.call('HINCRBY', book, field, int(-take))
  end
  if tonumber(charge) > 0 then redis.call('HINCRBY', book, 'spent', charge) end
  keep(book, leases, win)
  return answer(1, win, figures(book))
end
local function settle(w, op, micro, charge)
  local win, book, leases, new = operation(w, op)
  if not new then return answer(0, win, figures(book)) end
  if charge == '' then charge = micro end
  if tonumber(charge) > 0 then redis.call('HINCRBY', book, 'spent', charge) end
  keep(book, leases, win)
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
  if ARGV[i] == 'draw' then
    lines[#lines + 1] = draw(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  elseif ARGV[i] == 'settle' then
    lines[#lines + 1] = settle(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
  else
    lines[#lines + 1] = refund(ARGV[i + 1], ARGV[i + 2], ARGV[i + 3])
  end
end
return table.concat(lines, '\\n')
""",
    calendar=True,
)

# ARGV: prefix, lease ms, kind, then (window, pool id, base) for each pool of a process. A pool
# the server no longer has (it lapsed while this process could not reach Redis, or the server
# restarted empty) is held again at its base, the room of its creates under way and of settles
# not yet applied: that money is still committed. Its room not yet handed out is not held again.
# Answers a 1 (it had lapsed) or a 0 for each pool.
RENEW = Script(
    _BOOKS
    + """
local now = now_ms()
local again = {}
for i = 4, #ARGV, 3 do
  local win, id, base = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local book, leases = books(win)
  local flag = '0'
  if redis.call('ZADD', leases, 'XX', 'CH', now + tonumber(ARGV[2]), id) == 0
      and not redis.call('ZSCORE', leases, id) then
    flag = '1'  -- lapsed: the process learns that its free room is gone
    if base > 0 then
      redis.call('HINCRBY', book, 'reserved', int(base))
      redis.call('HSET', book, 'l:' .. id, int(base))
      redis.call('ZADD', leases, now + tonumber(ARGV[2]), id)
    end
  end
  keep(book, leases, win)
  again[#again + 1] = flag
end
return table.concat(again)
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
