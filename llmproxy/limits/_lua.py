"""The Redis side of the limits: one Lua script per decision, each atomic on the server.

Every script reads the clock with ``redis.call('TIME')`` — all gateways share Redis's clock, not
their own — and writes each key it touches with a TTL: buckets live until they would be full again
(a missing bucket *is* a full one), lease sets as long as their newest lease, quota counters for
``quota_ttl``. Numbers come back as strings (a Lua number returned to Redis loses its fraction);
an empty string stands for "none". :mod:`llmproxy.limits._wire` builds the arguments and reads the
replies. Needs Redis 5 or later (scripts replicated by effects, so TIME may precede writes).

Lease bookkeeping, per key: ``leases`` (sorted set, lease → expiry), ``held`` (hash, lease →
"tokens tpm quota" reserved at admission), ``late`` (sorted set of leases that expired before
they were settled, so a late settle still counts the usage, once) and ``void`` (sorted set of
leases whose admission the gateway gave up on: a stalled admit that reaches Redis afterwards must
not take a slot nobody will free).
"""

from __future__ import annotations

_PRELUDE = """
local EPSILON = 1e-9

local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

local function ms(seconds)
  return string.format('%d', math.ceil(seconds * 1000))
end

local function num(x)
  if x == nil then return '' end
  return string.format('%.6f', x)
end

local function whole(x)
  local w = math.floor(x + EPSILON)
  if w < 0 then w = 0 end
  return string.format('%d', w)
end

local function to_full(tokens, rate, burst)
  if tokens >= burst then return 0 end
  return (burst - tokens) / rate
end

-- The bucket at key refilled to now (a missing bucket is full); the clock never runs backwards.
local function refill(key, rate, burst, now)
  local v = redis.call('HMGET', key, 't', 'ts')
  local tokens, ts = tonumber(v[1]), tonumber(v[2])
  if tokens == nil or ts == nil then return burst, now end
  if now > ts then
    tokens = tokens + (now - ts) * rate
    ts = now
  end
  if tokens > burst then tokens = burst end
  return tokens, ts
end

-- Kept until it would be full again: after that, a missing bucket means the same thing.
local function save(key, tokens, ts, rate, burst)
  redis.call('HSET', key, 't', string.format('%.17g', tokens), 'ts', string.format('%.6f', ts))
  redis.call('PEXPIRE', key, ms(to_full(tokens, rate, burst) + 1))
end

local function bucket_reply(allowed, reason, wait, limit, tokens, rate, burst)
  local r = {allowed, reason, num(wait), '', '', '', '', '', ''}
  if limit then
    r[4] = string.format('%d', limit)
    r[5] = whole(tokens)
    r[6] = num(to_full(tokens, rate, burst))
  end
  return r
end
"""

CHECK_GLOBAL = (
    _PRELUDE
    + """
-- KEYS: bucket. ARGV: rate per second, burst.
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock()
local tokens, ts = refill(KEYS[1], rate, burst, now)
if tokens + EPSILON < 1 then
  return bucket_reply('0', 'requests', (1 - tokens) / rate, burst, tokens, rate, burst)
end
tokens = tokens - 1
save(KEYS[1], tokens, ts, rate, burst)
return bucket_reply('1', '', nil, burst, tokens, rate, burst)
"""
)

ADMIT = (
    _PRELUDE
    + """
-- KEYS: requests, leases, held, tokens, quota, late, void.
-- ARGV: lease ('' when nothing to settle), request rate (0: none), request burst,
--       max concurrent (0: none), tokens per minute (0: none), total quota (-1: none),
--       used quota baseline, tokens to reserve, lease ttl, quota ttl, marker ttl (seconds).
local K_REQ, K_LEASES, K_HELD, K_TOK, K_QUOTA, K_LATE, K_VOID =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local lease = ARGV[1]
local req_rate, req_burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_conc, tpm = tonumber(ARGV[4]), tonumber(ARGV[5])
local total, baseline, n = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local lease_ttl, quota_ttl, marker_ttl = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])
local now = clock()

local function reply(allowed, reason, wait, req_tokens, tok_tokens)
  local r = {allowed, reason, num(wait), '', '', '', '', '', ''}
  if req_rate > 0 then
    r[4] = string.format('%d', req_burst)
    r[5] = whole(req_tokens)
    r[6] = num(to_full(req_tokens, req_rate, req_burst))
  end
  if tpm > 0 then
    r[7] = string.format('%d', tpm)
    r[8] = whole(tok_tokens)
    r[9] = num(to_full(tok_tokens, tpm / 60, tpm))
  end
  return r
end

if lease ~= '' then
  -- The gateway gave up on this admission (timeout, cancellation) and voided it already.
  if redis.call('ZSCORE', K_VOID, lease) then
    return {'0', 'void', '', '', '', '', '', '', ''}
  end
  -- A retried admit (the client resends after a broken connection) that already ran.
  if redis.call('ZSCORE', K_LEASES, lease) then
    return {'1', '', '', '', '', '', '', '', ''}
  end
  -- Leases of gateways that died: free their slots and quota reservations.
  local stale = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', num(now), 'LIMIT', 0, 256)
  if #stale > 0 then
    local freed, marked = 0, false
    for _, id in ipairs(stale) do
      local held = redis.call('HGET', K_HELD, id)
      if held then
        local q = tonumber(string.match(held, '(%-?%d+)$'))
        if q and q >= 0 then
          freed, marked = freed + q, true
          redis.call('ZADD', K_LATE, num(now + marker_ttl), id)
        end
      end
    end
    redis.call('ZREM', K_LEASES, unpack(stale))
    redis.call('HDEL', K_HELD, unpack(stale))
    if freed > 0 then
      if redis.call('HINCRBY', K_QUOTA, 'reserved', string.format('%d', -freed)) < 0 then
        redis.call('HSET', K_QUOTA, 'reserved', 0)
      end
    end
    if marked then
      redis.call('ZREMRANGEBYSCORE', K_LATE, '-inf', num(now))
      redis.call('PEXPIRE', K_LATE, ms(marker_ttl))
    end
  end
end

local reason, wait = '', nil
local req_tokens, req_ts = 0, now
if req_rate > 0 then
  req_tokens, req_ts = refill(K_REQ, req_rate, req_burst, now)
  if req_tokens + EPSILON < 1 then
    reason, wait = 'requests', (1 - req_tokens) / req_rate
  end
end
if reason == '' and max_conc > 0 and redis.call('ZCARD', K_LEASES) >= max_conc then
  reason, wait = 'concurrency', 1
end
local tok_tokens, tok_ts = 0, now
if tpm > 0 then
  tok_tokens, tok_ts = refill(K_TOK, tpm / 60, tpm, now)
  if reason == '' and tok_tokens + EPSILON < n then
    reason = 'tokens'
    if n <= tpm then wait = (n - tok_tokens) / (tpm / 60) end
  end
end
local used, reserved = 0, 0
if reason == '' and total >= 0 then
  local q = redis.call('HMGET', K_QUOTA, 'used', 'reserved')
  used = math.max(tonumber(q[1]) or 0, baseline)
  reserved = tonumber(q[2]) or 0
  if total - used - reserved < n then
    reason = 'quota'
    if total - used >= n then wait = 1 end
  end
end
if reason ~= '' then
  return reply('0', reason, wait, req_tokens, tok_tokens)
end

if req_rate > 0 then
  req_tokens = req_tokens - 1
  save(K_REQ, req_tokens, req_ts, req_rate, req_burst)
end
if lease ~= '' then
  local t, q = 0, -1
  if tpm > 0 then
    t = n
    tok_tokens = tok_tokens - n
    save(K_TOK, tok_tokens, tok_ts, tpm / 60, tpm)
  end
  if total >= 0 then
    q = n
    redis.call('HSET', K_QUOTA, 'used', string.format('%d', used),
      'reserved', string.format('%d', reserved + n))
    redis.call('PEXPIRE', K_QUOTA, ms(quota_ttl))
  end
  redis.call('ZADD', K_LEASES, num(now + lease_ttl), lease)
  redis.call('HSET', K_HELD, lease, string.format('%d %d %d', t, tpm, q))
  -- The sets outlive their leases by the marker TTL: an expired lease must still be there for
  -- the next admission to free its quota reservation (and mark it late), not vanish with it.
  redis.call('PEXPIRE', K_LEASES, ms(lease_ttl + marker_ttl))
  redis.call('PEXPIRE', K_HELD, ms(lease_ttl + marker_ttl))
end
return reply('1', '', nil, req_tokens, tok_tokens)
"""
)

SETTLE = (
    _PRELUDE
    + """
-- KEYS: leases, held, tokens, quota, late, void.
-- ARGV: lease, used tokens, void (1: the admission was abandoned), quota ttl, marker ttl.
local K_LEASES, K_HELD, K_TOK, K_QUOTA, K_LATE, K_VOID =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local lease, used, void = ARGV[1], tonumber(ARGV[2]), ARGV[3] == '1'
local quota_ttl, marker_ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = clock()

if redis.call('ZREM', K_LEASES, lease) == 1 then
  local held = redis.call('HGET', K_HELD, lease) or '0 0 -1'
  redis.call('HDEL', K_HELD, lease)
  local t, tpm, q = string.match(held, '^(%-?%d+) (%-?%d+) (%-?%d+)$')
  t, tpm, q = tonumber(t), tonumber(tpm), tonumber(q)
  if t > 0 and tpm > 0 then
    local rate = tpm / 60
    local tokens, ts = refill(K_TOK, rate, tpm, now)
    tokens = tokens + t - used
    if tokens > tpm then tokens = tpm end
    save(K_TOK, tokens, ts, rate, tpm)
  end
  if q >= 0 then
    -- Integers go to HINCRBY through '%d': Lua would write -0 for zero, which Redis refuses.
    if redis.call('HINCRBY', K_QUOTA, 'reserved', string.format('%d', -q)) < 0 then
      redis.call('HSET', K_QUOTA, 'reserved', 0)
    end
    redis.call('HINCRBY', K_QUOTA, 'used', string.format('%d', used))
    redis.call('PEXPIRE', K_QUOTA, ms(quota_ttl))
  end
  return 1
end
if void then
  redis.call('ZADD', K_VOID, num(now + marker_ttl), lease)
  redis.call('ZREMRANGEBYSCORE', K_VOID, '-inf', num(now))
  redis.call('PEXPIRE', K_VOID, ms(marker_ttl))
  return 0
end
-- Settled after its lease expired: the slot and reservation were freed; count the usage once.
if redis.call('ZREM', K_LATE, lease) == 1 then
  redis.call('HINCRBY', K_QUOTA, 'used', string.format('%d', used))
  redis.call('PEXPIRE', K_QUOTA, ms(quota_ttl))
  return 2
end
return 0
"""
)

RENEW = (
    _PRELUDE
    + """
-- KEYS: leases, held. ARGV: lease ttl, marker ttl (seconds), then the leases a live gateway
-- still holds. Pushes each one's expiry to now + ttl; a lease already gone (settled, or freed as
-- expired) stays gone. Returns how many were renewed.
local ttl, keep = tonumber(ARGV[1]), tonumber(ARGV[2])
local now = clock()
local renewed = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) then
    redis.call('ZADD', KEYS[1], 'XX', num(now + ttl), ARGV[i])
    renewed = renewed + 1
  end
end
if renewed > 0 then
  for _, key in ipairs(KEYS) do
    if redis.call('PTTL', key) < ms(ttl + keep) then redis.call('PEXPIRE', key, ms(ttl + keep)) end
  end
end
return renewed
"""
)

IN_FLIGHT = """
-- KEYS: leases. Leases whose expiry is still ahead (Redis's clock).
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], '(' .. string.format('%.6f', now), '+inf')
"""
