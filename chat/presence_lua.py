"""The Lua scripts of :mod:`chat.presence`'s Redis presence: each change is one script,
so it is atomic. KEYS/ARGV layouts are documented at each script; hash fields are
connection names (``"<process id>|<connection id>"``).
"""

USERS = """
local function users_of(key)
  local seen, list = {}, {}
  for _, u in ipairs(redis.call('HVALS', key)) do
    if not seen[u] then seen[u] = true; table.insert(list, u) end
  end
  table.sort(list)
  return list, seen
end
"""

# A room's presence version starts at the current time in microseconds (the floor), so
# after Redis loses it (a restart, or its expiry: VERSION_TTL_SECONDS) new versions are
# still above the old ones that connections hold, and their presence events are not
# dropped as stale. bump(key, floor, n, ttl) takes n versions and returns the last.
BUMP = """
local function bump(key, floor, n, ttl)
  if redis.call('EXISTS', key) == 0 then redis.call('SET', key, floor) end
  local last = redis.call('INCRBY', key, n)
  redis.call('EXPIRE', key, ttl)
  return last
end
"""

ROOM_JOIN = USERS + BUMP + """
local _, before = users_of(KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
local list = users_of(KEYS[1])
return {before[ARGV[2]] and 1 or 0, list, bump(KEYS[3], ARGV[4], 1, ARGV[5])}
"""  # KEYS: room hash, proc rooms set, room version; ARGV: conn, user, room, version floor,
#    version ttl

ROOM_LEAVE = USERS + BUMP + """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return {1, {}, 0} end
redis.call('HDEL', KEYS[1], ARGV[1])
local list, seen = users_of(KEYS[1])
local prefix, own = ARGV[4], false
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then own = true; break end
end
if not own then redis.call('SREM', KEYS[3], ARGV[5]) end
return {(user and seen[user]) and 1 or 0, list, bump(KEYS[2], ARGV[2], 1, ARGV[3])}
"""  # KEYS: room hash, room version, proc rooms set; ARGV: conn, version floor, version ttl,
#    "<proc>|", room. The room leaves the process's set with its last connection there.
#    A connection that is not in the room changes nothing (and is reported present).

REAP_ROOM = USERS + BUMP + """
local _, before = users_of(KEYS[1])
local prefix = ARGV[1]
for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(f, 1, #prefix) == prefix then redis.call('HDEL', KEYS[1], f) end
end
local list, after = users_of(KEYS[1])
local gone = {}
for u, _ in pairs(before) do if not after[u] then table.insert(gone, u) end end
table.sort(gone)
if #gone == 0 then return {gone, list, 0} end
return {gone, list, bump(KEYS[2], ARGV[2], #gone, ARGV[3])}
"""  # KEYS: room hash, room version; ARGV: "<proc>|", version floor, version ttl.
#    One version per user gone (the last is returned): each departure is announced.

LOCK = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('SET', KEYS[3], '1', 'PX', 200)
  return false
end
redis.call('DEL', KEYS[3])
local last = redis.call('GET', KEYS[2])
if not last then
  last = ARGV[3] .. ':0'
  redis.call('SET', KEYS[2], last, 'EX', ARGV[4])
end
return last
"""  # KEYS: room lock, room publication, room waiting; ARGV: token, ttl ms, a new epoch,
#    the publication's ttl in seconds

KEEP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] ~= '' then redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4]) end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""  # KEYS: as LOCK; ARGV: token, ttl ms, the turn's last publication or '', the
#    publication's ttl in seconds. 1: kept

UNLOCK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end
return redis.call('DEL', KEYS[1])
"""  # KEYS: room lock, room publication; ARGV: token, the turn's last publication or '',
#    the publication's ttl in seconds
