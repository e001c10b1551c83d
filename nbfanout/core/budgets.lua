-- nbfanout's shared budgets (core/store.py): one script, one command per call in ARGV[1].
--
-- Every time is the Redis server's (TIME), in milliseconds, never a client's. Every key the
-- script writes gets a TTL, so nothing accumulates. The shapes mirror core/shapes.py:
--   tb  token bucket: hash {level, t}; takes of the last ARRIVAL ms hold its ceiling down
--       (zset member -> taken at, hash member -> amount), as TokenBucket does
--   sw  sliding window: zset member -> time, hash member -> amount, '#' -> total
--   fw  fixed window: one counter per window index, carried into the next near an edge
-- A budget (JSON): {id, conc, kinds = [{kind, shape, limit, amount, cap, span, phase, slice}]}.
-- Keys are built here from ARGV[2] (the namespace): a standalone or single-shard Redis.

local cmd, P = ARGV[1], ARGV[2]
-- writes after TIME need effects replication: Redis 7 always does it, 6.x is asked to
if redis.replicate_commands then pcall(redis.replicate_commands) end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local ARRIVAL = 500   -- TokenBucket.ARRIVAL_S
local EDGE = 1000     -- FixedWindow.EDGE_S
local DAY = 86400000
local EPS = 1e-9
local KEEP = 120000   -- a reservation record outlives its release by this much (a refund follows it)

local function num(x) return tonumber(x) or 0 end
local function keep(key, ms) redis.call('PEXPIRE', key, math.ceil(ms)) end
local function base(id) return P .. ':b:' .. id end
local function skey(id, k) return base(id) .. ':' .. k.kind .. ':' .. k.shape end

-- token bucket ---------------------------------------------------------------------------------
local function grow(level, ms, ceiling, rate)
  if level >= ceiling then return level end
  return math.min(ceiling, level + ms * rate)
end

-- the bucket refilled to now: {level, pending entries {at, amount, member} oldest first, their sum}
local function tb_state(K, k)
  local s = redis.call('HMGET', K, 'level', 't')
  local cap, rate = k.cap, k.limit / k.span
  local level, t = tonumber(s[1]), tonumber(s[2])
  if level == nil then level, t = cap, now end
  local z = redis.call('ZRANGEBYSCORE', K .. ':p', '(' .. (t - ARRIVAL), '+inf', 'WITHSCORES')
  local pend, pending = {}, 0
  for i = 1, #z, 2 do
    local a = num(redis.call('HGET', K .. ':a', z[i]))
    pend[#pend + 1] = {tonumber(z[i + 1]), a, z[i]}
    pending = pending + a
  end
  if now > t then
    local p, done = pending, false
    for _, e in ipairs(pend) do
      local untl = e[1] + ARRIVAL
      local stop = math.min(untl, now)
      if stop > t then level = grow(level, stop - t, cap - p, rate); t = stop end
      if untl >= now then done = true; break end
      p = p - e[2]
    end
    if not done then level = grow(level, now - t, cap, rate) end
  end
  local live, total = {}, 0
  for _, e in ipairs(pend) do
    if e[1] + ARRIVAL > now then
      live[#live + 1] = e; total = total + e[2]
    else
      redis.call('ZREM', K .. ':p', e[3]); redis.call('HDEL', K .. ':a', e[3])
    end
  end
  return {level = level, pend = live, pending = total}
end

local function tb_save(K, k, st)
  redis.call('HSET', K, 'level', st.level, 't', now)
  local ttl = k.span + ARRIVAL + 60000
  keep(K, ttl); keep(K .. ':p', ttl); keep(K .. ':a', ttl)
end

local function tb_wait(K, k, amount)
  if amount > k.cap + EPS then return math.huge end
  local st = tb_state(K, k)
  local rate = k.limit / k.span
  local level, t, p = st.level, now, st.pending
  for _, e in ipairs(st.pend) do
    local ceiling = k.cap - p
    if ceiling >= amount - EPS then break end
    local untl = e[1] + ARRIVAL
    level = grow(level, untl - t, ceiling, rate); t = untl; p = p - e[2]
  end
  local deficit = amount - level
  if deficit > EPS then return t - now + deficit / rate end
  return t - now
end

local function tb_forget(K, st, member, amount)
  local a = num(redis.call('HGET', K .. ':a', member))
  if a <= 0 then return end
  local cut = math.min(amount, a)
  if a - cut <= EPS then
    redis.call('HDEL', K .. ':a', member); redis.call('ZREM', K .. ':p', member)
  else
    redis.call('HSET', K .. ':a', member, a - cut)
  end
  st.pending = st.pending - cut
end

-- sliding window --------------------------------------------------------------------------------
local function sw_total(K, k)
  local gone = redis.call('ZRANGEBYSCORE', K, '-inf', now - k.span)
  local total = num(redis.call('HGET', K .. ':a', '#'))
  for _, m in ipairs(gone) do
    total = total - num(redis.call('HGET', K .. ':a', m))
    redis.call('HDEL', K .. ':a', m)
  end
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', K, '-inf', now - k.span)
    redis.call('HSET', K .. ':a', '#', math.max(0, total))
  end
  return math.max(0, total)
end

local function sw_wait(K, k, amount)
  if amount > k.limit + EPS then return math.huge end
  local need = sw_total(K, k) + amount - k.limit
  if need <= EPS then return 0 end
  local z = redis.call('ZRANGE', K, 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #z, 2 do
    freed = freed + num(redis.call('HGET', K .. ':a', z[i]))
    if freed >= need - EPS then return math.max(0, tonumber(z[i + 1]) + k.span - now) end
  end
  return math.huge
end

local function sw_add(K, k, member, amount)
  redis.call('ZADD', K, now, member)
  redis.call('HINCRBYFLOAT', K .. ':a', member, amount)
  redis.call('HINCRBYFLOAT', K .. ':a', '#', amount)
  keep(K, k.span + 60000); keep(K .. ':a', k.span + 60000)
end

-- fixed window ----------------------------------------------------------------------------------
local function fw_index(k, at) return math.floor((at - k.phase) / k.span) end
local function fw_key(K, index) return K .. ':' .. string.format('%d', index) end
local function fw_near_end(k, at) return (fw_index(k, at) + 1) * k.span + k.phase - at < EDGE end
local function fw_add(K, k, index, amount)
  local key = fw_key(K, index)
  local v = tonumber(redis.call('INCRBYFLOAT', key, amount))
  if v < 0 then redis.call('SET', key, 0) end
  keep(key, 2 * k.span + 60000)
end

local function fw_wait(K, k, amount)
  if amount > k.limit + EPS then return math.huge end
  local index = fw_index(k, now)
  if num(redis.call('GET', fw_key(K, index))) + amount <= k.limit + EPS then return 0 end
  return math.max(0, (index + 1) * k.span + k.phase - now)
end

-- one shape, by name ----------------------------------------------------------------------------
local function wait(K, k, amount)
  if k.shape == 'tb' then return tb_wait(K, k, amount) end
  if k.shape == 'sw' then return sw_wait(K, k, amount) end
  return fw_wait(K, k, amount)
end

-- take `amount`; returns what a later give-back or charge needs to find it
local function take(K, k, amount, rid, id)
  local e = {K = K, k = k, amount = amount, id = id}
  if k.shape == 'tb' then
    local st = tb_state(K, k)
    st.level = st.level - amount
    if k.cap >= 2 * amount then
      redis.call('ZADD', K .. ':p', now, rid); redis.call('HSET', K .. ':a', rid, amount)
    end
    tb_save(K, k, st)
    e.member = rid
  elseif k.shape == 'sw' then
    sw_total(K, k)
    e.member = rid
    if k.slice > 0 then e.member = 's' .. string.format('%d', math.floor(now / k.slice)) end
    sw_add(K, k, e.member, amount)
  else
    e.index = fw_index(k, now)
    e.carried = fw_near_end(k, now)
    fw_add(K, k, e.index, amount)
    if e.carried then fw_add(K, k, e.index + 1, amount) end
  end
  return e
end

local function give_back(e, amount)
  local K, k = e.K, e.k
  if amount <= 0 then return end
  if k.shape == 'tb' then
    local st = tb_state(K, k)
    tb_forget(K, st, e.member, amount)
    st.level = math.min(k.cap - st.pending, st.level + amount)
    tb_save(K, k, st)
  elseif k.shape == 'sw' then
    sw_total(K, k)
    local cur = num(redis.call('HGET', K .. ':a', e.member))
    if redis.call('ZSCORE', K, e.member) and cur > 0 then
      local back = math.min(amount, cur)
      redis.call('HINCRBYFLOAT', K .. ':a', e.member, -back)
      redis.call('HINCRBYFLOAT', K .. ':a', '#', -back)
    end
  else
    fw_add(K, k, e.index, -amount)
    if e.carried then fw_add(K, k, e.index + 1, -amount) end
  end
end

local function charge(e, amount)
  local K, k = e.K, e.k
  if amount <= 0 then return end
  if k.shape == 'tb' then
    local st = tb_state(K, k)
    st.level = st.level - amount
    tb_save(K, k, st)
  elseif k.shape == 'sw' then
    sw_total(K, k)
    if not redis.call('ZSCORE', K, e.member) then e.member = e.member .. '+' end
    redis.call('HINCRBYFLOAT', K .. ':a', e.member, amount)
    redis.call('HINCRBYFLOAT', K .. ':a', '#', amount)
    if not redis.call('ZSCORE', K, e.member) then redis.call('ZADD', K, now, e.member) end
    keep(K, k.span + 60000); keep(K .. ':a', k.span + 60000)
  else
    local index = fw_index(k, now)
    fw_add(K, k, index, amount)
    if index == e.index and e.carried then fw_add(K, k, index + 1, amount) end
  end
end

-- the answer came: the provider counted the request on arrival, after it was sent
local function restamp(e)
  local K, k = e.K, e.k
  if k.shape == 'tb' then
    local st = tb_state(K, k)
    tb_forget(K, st, e.member, math.huge)
    tb_save(K, k, st)
  elseif k.shape == 'sw' then
    redis.call('ZADD', K, 'XX', now, e.member)
  end
end

local function used(K, k)
  if k.shape == 'tb' then return k.cap - tb_state(K, k).level end
  if k.shape == 'sw' then return sw_total(K, k) end
  return num(redis.call('GET', fw_key(K, fw_index(k, now))))
end

-- reading ----------------------------------------------------------------------------------------
local LIMIT_FIELDS = {'rpm', 'tpm', 'rpd', 'ash', 'asd', 'concurrency'}
local FIELD_INDEX = {}
for i, f in ipairs(LIMIT_FIELDS) do FIELD_INDEX[f] = i end

-- what every process together uses of a budget, and the limits one of them learned
local function stats(b)
  local B = base(b.id)
  local out = {id = b.id, used = {}, limits = {}}
  for _, k in ipairs(b.kinds) do
    if k.limit >= 0 then out.used[k.kind] = used(skey(b.id, k), k) end
  end
  out.in_flight = redis.call('ZCOUNT', B .. ':lease', '(' .. now, '+inf')
  out.processes = redis.call('ZCOUNT', B .. ':procs', '(' .. now, '+inf')
  local lim = redis.call('HMGET', B .. ':meta', unpack(LIMIT_FIELDS))
  for i, f in ipairs(LIMIT_FIELDS) do
    if lim[i] then out.limits[f] = tonumber(lim[i]) end
  end
  return out
end

local function all_stats(budgets)
  local out = {}
  for i, b in ipairs(budgets) do out[i] = stats(b) end
  return out
end

local function touch_process(b, proc, lease)
  local B = base(b.id)
  redis.call('ZADD', B .. ':procs', now + lease, proc)
  redis.call('ZREMRANGEBYSCORE', B .. ':procs', '-inf', now)
  keep(B .. ':procs', lease + 60000)
end

local function released(ids)
  if #ids > 0 then redis.call('PUBLISH', P .. ':released', table.concat(ids, '\n')) end
end

-- commands ---------------------------------------------------------------------------------------
if cmd == 'reserve' then
  -- ARGV: rid, lease ms, budgets JSON (a process counts itself in at each renewal, not here)
  local rid, lease = ARGV[3], tonumber(ARGV[4])
  local budgets = cjson.decode(ARGV[5])
  local R = P .. ':r:' .. rid
  if redis.call('EXISTS', R) == 1 then  -- a retried call: it was admitted the first time
    return cjson.encode({ok = true})
  end
  local worst = nil
  local learned = {}  -- limits other processes learned, per budget: the client adopts them
  for i, b in ipairs(budgets) do
    local B = base(b.id)
    local meta = redis.call('HMGET', B .. ':meta', 'disabled', unpack(LIMIT_FIELDS))
    if meta[1] then
      return cjson.encode({ok = false, i = i, why = 'disabled', text = meta[1], wait = -1})
    end
    local limits, any = {}, false
    for f, name in ipairs(LIMIT_FIELDS) do
      if meta[f + 1] then limits[name] = tonumber(meta[f + 1]); any = true end
    end
    if any then learned[#learned + 1] = {id = b.id, limits = limits} end
    local cd = redis.call('PTTL', B .. ':cd')
    if cd > 0 and (worst == nil or worst.wait < cd) then
      worst = {i = i, why = 'cooldown', text = redis.call('GET', B .. ':cd') or '', wait = cd}
    end
    local conc = tonumber(meta[FIELD_INDEX.concurrency + 1]) or b.conc
    if conc then
      redis.call('ZREMRANGEBYSCORE', B .. ':lease', '-inf', now)
      local n = redis.call('ZCARD', B .. ':lease')
      if n >= conc then
        local first = redis.call('ZRANGE', B .. ':lease', 0, 0, 'WITHSCORES')
        local expiry = tonumber(first[2]) - now
        if worst == nil or (worst.why ~= 'cooldown' and worst.why ~= 'rate') then
          worst = {i = i, why = 'concurrency', text = n .. '/' .. conc .. ' in flight across processes',
                   wait = expiry}
        end
      end
    end
    local counted = {}
    for _, k in ipairs(b.kinds) do
      local stored = tonumber(meta[FIELD_INDEX[k.kind] + 1])
      if stored and stored ~= k.limit then  -- a limit another process learned
        if k.cap == k.limit or k.limit < 0 then k.cap = stored end
        k.limit = stored
      end
      if k.shape == 'fw' then  -- the window edges a provider's reset showed one process hold for all
        k.phase = tonumber(redis.call('HGET', B .. ':meta', 'phase:' .. k.kind)) or k.phase
      end
      if k.limit >= 0 then counted[#counted + 1] = k end  -- a limit nobody knows yet counts nothing
    end
    b.kinds = counted
    for _, k in ipairs(b.kinds) do
      if k.amount > 0 then
        local w = wait(skey(b.id, k), k, k.amount)
        if w > 0 and (worst == nil or worst.why == 'concurrency' or worst.wait < w) then
          worst = {i = i, why = 'rate', kind = k.kind, text = k.kind .. ' ' .. k.limit, wait = w}
        end
      end
    end
  end
  if worst ~= nil then
    if worst.wait == math.huge then worst.wait = -1 end
    worst.ok = false
    if #learned > 0 then worst.learned = learned end
    return cjson.encode(worst)
  end
  local entries, ids = {}, {}
  for _, b in ipairs(budgets) do
    for _, k in ipairs(b.kinds) do
      if k.amount > 0 then entries[#entries + 1] = take(skey(b.id, k), k, k.amount, rid, b.id) end
    end
    local B = base(b.id)
    redis.call('ZADD', B .. ':lease', now + lease, rid)
    keep(B .. ':lease', lease + 60000)
    ids[#ids + 1] = b.id
  end
  redis.call('SET', R, cjson.encode({entries = entries, ids = ids}), 'PX', math.ceil(lease + KEEP))
  if #learned > 0 then return cjson.encode({ok = true, learned = learned}) end
  return '{"ok":true}'

elseif cmd == 'release' or cmd == 'adjust' then
  -- release: ARGV rid. adjust: ARGV rid, JSON {tpm = {budget id: extra}, audio = seconds, refund = bool}
  local rid = ARGV[3]
  local R = P .. ':r:' .. rid
  local raw = redis.call('GET', R)
  if not raw then return cjson.encode({ok = false}) end
  local rec = cjson.decode(raw)
  if cmd == 'release' then
    if rec.released then return cjson.encode({ok = true}) end
    for _, e in ipairs(rec.entries) do restamp(e) end
    for _, id in ipairs(rec.ids) do redis.call('ZREM', base(id) .. ':lease', rid) end
    rec.released = true
    released(rec.ids)
  else
    local change = cjson.decode(ARGV[4])
    local mark = change.refund and 'refunded' or 'settled'
    if rec[mark] then return cjson.encode({ok = true}) end  -- a retried call: done the first time
    rec[mark] = true
    for _, e in ipairs(rec.entries) do
      local id = e.id
      if change.refund then
        give_back(e, e.amount)
        e.amount = 0
      elseif e.k.kind == 'tpm' and change.tpm[id] then
        local extra = change.tpm[id]
        if extra > 0 then charge(e, extra) else give_back(e, -extra) end
        e.amount = math.max(0, e.amount + extra)
      elseif (e.k.kind == 'ash' or e.k.kind == 'asd') and change.audio then
        if change.audio > 0 then charge(e, change.audio) else give_back(e, -change.audio) end
        e.amount = math.max(0, e.amount + change.audio)
      end
    end
    if change.refund then released(rec.ids) end
  end
  redis.call('SET', R, cjson.encode(rec), 'PX', KEEP)
  return cjson.encode({ok = true})

elseif cmd == 'renew' then
  -- ARGV: process, lease ms, JSON [rid, ...] still open, budgets JSON (for their shared use)
  local proc, lease = ARGV[3], tonumber(ARGV[4])
  local rids, budgets = cjson.decode(ARGV[5]), cjson.decode(ARGV[6])
  for _, rid in ipairs(rids) do
    local raw = redis.call('GET', P .. ':r:' .. rid)
    if raw then
      local rec = cjson.decode(raw)
      for _, id in ipairs(rec.ids) do redis.call('ZADD', base(id) .. ':lease', 'XX', now + lease, rid) end
      redis.call('PEXPIRE', P .. ':r:' .. rid, math.ceil(lease + KEEP))
    end
  end
  for _, b in ipairs(budgets) do touch_process(b, proc, lease) end
  return cjson.encode({ok = true, now = now, stats = all_stats(budgets)})

elseif cmd == 'cooldown' then
  -- ARGV: budget id, ms, reason. A longer wait already asked for stays.
  local key, ms = base(ARGV[3]) .. ':cd', tonumber(ARGV[4])
  if redis.call('PTTL', key) < ms then redis.call('SET', key, ARGV[5], 'PX', math.ceil(ms)) end
  return cjson.encode({ok = true})

elseif cmd == 'clear_cooldown' then
  redis.call('DEL', base(ARGV[3]) .. ':cd')
  released({ARGV[3]})
  return cjson.encode({ok = true})

elseif cmd == 'observe' then
  -- ARGV: budget JSON with one kind, the provider's remaining, its reset in ms (-1: none), what this
  -- process sent since. Headers count use the store never saw (another client, requests sent before
  -- the limit was known): a window's count only rises to meet the provider's own (limit - remaining),
  -- never to that plus what was sent since. The provider counts a request when it arrives, so one
  -- sent after this answer's request often arrived before the answer was made and is in `remaining`
  -- already; adding it again would hold a request the provider never saw for a whole window (as
  -- core/shapes.py's windows, which move up only to `low`). A count still short is raised by the
  -- next answer's headers. A token bucket's level is set, not added to: the next answer sets it again.
  local b = cjson.decode(ARGV[3])
  local k = b.kinds[1]
  local remaining, reset, newer = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local K = skey(b.id, k)
  local low = math.max(0, k.limit - remaining)
  if k.shape == 'tb' then
    local st = tb_state(K, k)
    local level = math.min(k.cap - st.pending, remaining - newer)
    if level < st.level then st.level = level; tb_save(K, k, st) end
  elseif k.shape == 'sw' then
    local total = sw_total(K, k)
    if total < low - EPS then
      local at = now
      if reset >= 0 then at = math.min(now, now + reset - k.span) end
      local member = 'h' .. string.format('%.3f', now)
      redis.call('ZADD', K, at, member)
      redis.call('HINCRBYFLOAT', K .. ':a', member, low - total)
      redis.call('HSET', K .. ':a', '#', low)
      keep(K, k.span + 60000); keep(K .. ':a', k.span + 60000)
    end
  else
    if reset >= 0 and reset <= k.span then  -- the provider's window ends `reset` from now: its edges, for all
      local phase = (now + reset) % k.span
      redis.call('HSET', base(b.id) .. ':meta', 'phase:' .. k.kind, phase)
      keep(base(b.id) .. ':meta', DAY)
      k.phase = phase
    else
      k.phase = tonumber(redis.call('HGET', base(b.id) .. ':meta', 'phase:' .. k.kind)) or k.phase
    end
    local key = fw_key(K, fw_index(k, now))
    if num(redis.call('GET', key)) < low - EPS then
      redis.call('SET', key, low); keep(key, 2 * k.span + 60000)
    end
  end
  return cjson.encode({ok = true})

elseif cmd == 'learn' then
  -- ARGV: budget id, field (a limit kind, or 'disabled'), value
  local key = base(ARGV[3]) .. ':meta'
  redis.call('HSET', key, ARGV[4], ARGV[5])
  keep(key, DAY)
  released({ARGV[3]})
  return cjson.encode({ok = true})
end
return redis.error_reply('nbfanout budgets: unknown command ' .. tostring(cmd))
