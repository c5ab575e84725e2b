"""The Lua scripts: each a single atomic step in Redis, called with one EVALSHA.

Times come from Redis (`TIME`), not from the replicas, so buckets shared by several machines
agree on what "now" is. Numbers go back as strings (`%.17g`): Redis turns a Lua number reply
into an integer, which would cut a GCRA time to the second.

ADMIT, one call per admitted request of a key with limits or budgets:
  KEYS  = the GCRA buckets (a hash {t: tat, l: limit}), then the spend counters;
  ARGV  = #buckets, #spends, each bucket's limit, each bucket's take (1: requests, 0: tokens),
          then "now" ('' for Redis's clock; tests pass theirs, as in-process tests do).
  1. every bucket is checked (a changed limit keeps the units used, as in-process); if one is
     full nothing is written: reply {"limited", now, tat...};
  2. else the request buckets take one unit, then the spend counters are read:
     reply {"ok", now, tat..., spend...}, a spend "" when the counter is not seeded yet.
  The budgets are compared by the caller: a request refused for its budget still counted
  against its rate limits, exactly as the in-process checks do (rate limits run first).

SETTLE, fire-and-forget once a response is priced:
  KEYS  = token buckets, then spend counters; ARGV = #buckets, tokens, cost, each limit, now.
  Tokens go into the buckets (possibly into debt); the cost is added to each counter that
  exists (a counter not seeded yet gets its total from the store when it is seeded).
"""

from __future__ import annotations

__all__ = ["ADMIT", "SETTLE"]

_COMMON = """
local W, EPS = 60.0, 1e-9
local now = tonumber(ARGV[#ARGV])  -- a test's clock; '' in production: Redis's
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function fmt(x) return string.format('%.17g', x) end
local function load(key, limit)
  local got = redis.call('HMGET', key, 't', 'l')
  local tat = tonumber(got[1]) or 0
  local old = tonumber(got[2])
  if old and old ~= limit and old > 0 and limit > 0 and tat > now then
    tat = now + (tat - now) * old / limit
  end
  return tat
end
local function save(key, tat, limit)
  if tat > now then
    redis.call('HSET', key, 't', fmt(tat), 'l', fmt(limit))
    redis.call('PEXPIRE', key, math.ceil((tat - now) * 1000) + 1000)
  else
    redis.call('DEL', key)
  end
end
"""

ADMIT = (
    _COMMON
    + """
local nb, ns = tonumber(ARGV[1]), tonumber(ARGV[2])
local tats, limits, limited = {}, {}, false
for i = 1, nb do
  local limit = tonumber(ARGV[2 + i])
  local tat = load(KEYS[i], limit)
  tats[i], limits[i] = tat, limit
  local wait = W
  if limit > 0 then wait = math.max(0, tat - now) + W / limit - W - EPS end
  if wait > 0 then limited = true end
end
local out = {'ok', fmt(now)}
if limited then out[1] = 'limited' end
for i = 1, nb do
  if not limited and ARGV[2 + nb + i] == '1' and limits[i] > 0 then
    tats[i] = math.max(tats[i], now) + W / limits[i]
    save(KEYS[i], tats[i], limits[i])
  end
  out[#out + 1] = fmt(tats[i])
end
if not limited then
  for i = 1, ns do
    out[#out + 1] = redis.call('GET', KEYS[nb + i]) or ''
  end
end
return out
"""
)

SETTLE = (
    _COMMON
    + """
local nb, tokens, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
for i = 1, nb do
  local limit = tonumber(ARGV[3 + i])
  if limit > 0 and tokens > 0 then
    save(KEYS[i], math.max(load(KEYS[i], limit), now) + tokens * W / limit, limit)
  end
end
if tonumber(cost) > 0 then
  for i = nb + 1, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 1 then redis.call('INCRBYFLOAT', KEYS[i], cost) end
  end
end
return 1
"""
)
