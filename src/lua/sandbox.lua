-- The sandbox of one interpreter state. This chunk runs once, when the state
-- is created, with the (already trimmed) standard library; it keeps what
-- scripts may use in locals that no script can reach, and returns
-- `new_env`, which builds the fresh environment of one run.
--
-- Every table a script can reach is made for its run alone: the library
-- tables are copies, and the string metatable is replaced for each run (by
-- the Rust side, with the one returned here). So whatever a script writes,
-- even with rawset, is gone when its run ends.
local host = ...

local error, ipairs, pairs, rawget, select, tostring, type =
  error, ipairs, pairs, rawget, select, tostring, type
local concat = table.concat
local real_load, real_pcall, real_xpcall, real_setmetatable = load, pcall, xpcall, setmetatable
local real_create, real_resume, real_close = coroutine.create, coroutine.resume, coroutine.close
local randomseed, tointeger = math.randomseed, math.tointeger
local real_rep = string.rep
local real_insert, real_remove, real_move = table.insert, table.remove, table.move
local real_sort, real_date = table.sort, os.date
local expired, host_log, seed = host.expired, host.log, host.seed
local may_compile, may_hold = host.may_compile, host.may_hold
local max_elements, max_load = host.max_elements, host.max_load

-- Nothing may dump a function, not even through ("").dump.
string.dump = nil

local SAFE_BASE = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "rawequal",
  "rawget", "rawlen", "rawset", "select", "tonumber", "tostring", "type",
}

local LIBRARIES = {
  string = string,
  table = table,
  math = math,
  utf8 = utf8,
  coroutine = coroutine,
  os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime },
}

-- Lua's pattern matcher backtracks inside one C call, out of the hook's
-- sight: these are a port of it with a step budget (patterns.rs). Its
-- script errors come back as (FAIL, message), raised here as the plain
-- strings the C functions raise.
local FAIL = host.pattern_fail
local function checked(first, ...)
  if rawequal(first, FAIL) then
    error((...), 0)
  end
  return first, ...
end
local host_find, host_match, host_gmatch, host_gsub = host.find, host.match, host.gmatch, host.gsub
function string.find(...)
  return checked(host_find(...))
end
function string.match(...)
  return checked(host_match(...))
end
function string.gsub(...)
  return checked(host_gsub(...))
end
function string.gmatch(...)
  local next_match = checked(host_gmatch(...))
  return function()
    return checked(next_match())
  end
end

local function copy(t)
  local c = {}
  for k, v in pairs(t) do
    c[k] = v
  end
  return c
end

-- pcall, xpcall, coroutine.resume/close and load (with a reader function)
-- catch errors. The time limit is an error raised by the instruction hook:
-- once it has passed, these hand the error on instead of swallowing it, so
-- `while true do pcall(spin) end` ends too.
local function unless_expired(ok, ...)
  if not ok and expired() then
    error((...), 0)
  end
  return ok, ...
end

local function pcall(...)
  return unless_expired(real_pcall(...))
end

-- A hook error raises with hooks off until it has unwound, and Lua runs
-- the message handler before that: a handler that spins would never be
-- stopped. So once the time is up, the script's handler is skipped.
local function xpcall(f, handler, ...)
  if type(handler) ~= "function" then
    return real_xpcall(f, handler, ...) -- stock error message
  end
  local function guarded(e)
    if expired() then
      return e
    end
    return handler(e)
  end
  return unless_expired(real_xpcall(f, guarded, ...))
end

local function resume(...)
  return unless_expired(real_resume(...))
end

-- A coroutine stopped by the hook is left with hooks off, and closing it
-- runs its pending __close handlers: once the time is up, no coroutine is
-- closed (a dead one is garbage; the collector does not run __close).
local function close(co)
  if expired() then
    error("time limit exceeded", 0)
  end
  return unless_expired(real_close(co))
end

-- coroutine.wrap as in lcorolib.c, on top of the guarded resume and close:
-- the C one closes a failed coroutine itself.
local function wrap_results(co, ok, ...)
  if ok then
    return ...
  end
  local err = ...
  if expired() then
    error(err, 0)
  end
  local closed, close_err = real_close(co)
  if not closed then
    err = close_err
  end
  if type(err) == "string" then
    error(err, 3) -- where the wrapped function was called, as the C one says
  end
  error(err, 0)
end

local function wrap(f)
  local co = real_create(f)
  return function(...)
    return wrap_results(co, real_resume(co, ...))
  end
end

-- A finalizer would run later, during another request's run, so no
-- metatable with __gc is accepted. (Lua only honours a __gc present when the
-- metatable is set.)
local function setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not available in the sandbox", 2)
  end
  return real_setmetatable(t, mt)
end

-- C loops that never allocate nor call Lua run out of the hook's sight, so
-- their counts must be bounded by something real. These library functions
-- loop as often as an argument (or a __len metamethod) says:

-- ("").rep(1e18) loops 10^18 times to build "".
local function rep(s, n, sep)
  if s == "" and (sep == nil or sep == "") and tointeger(n) then
    return ""
  end
  -- What it builds, for an inline attempt's slice of memory (a no-op on a
  -- worker): in floating point, which cannot wrap around.
  local count = tointeger(n)
  if type(s) == "string" and count and count > 0 then
    local seplen = type(sep) == "string" and #sep or 0
    may_hold(#s * (count + 0.0) + seplen * (count - 1.0))
  end
  return real_rep(s, n, sep)
end

-- table.move({}, 1, 1e15, 2) moves 10^15 nils. No run can fill more slots
-- than its memory limit allows, so longer moves are refused.
local function move(a1, f, e, t, a2)
  local first, last = tointeger(f), tointeger(e)
  if first and last and last - first >= max_elements then
    error("bad argument #3 to 'move' (too many elements to move)", 2)
  end
  return real_move(a1, f, e, t, a2)
end

-- table.insert(t, pos, v) and table.remove(t, pos) shift #t elements, and
-- #t is whatever __len says: with a position, they shift in Lua instead,
-- as ltablib.c does in C.
local function check_position(pos, ok_max, name)
  local p = tointeger(pos)
  if p == nil then
    error("bad argument #2 to '" .. name .. "' (number has no integer representation)", 3)
  end
  if p < 1 or p > ok_max then
    error("bad argument #2 to '" .. name .. "' (position out of bounds)", 3)
  end
  return p
end

local function insert(t, ...)
  if select("#", ...) ~= 2 then
    return real_insert(t, ...) -- appending shifts nothing
  end
  local pos, value = ...
  local e = #t + 1
  pos = check_position(pos, e, "insert")
  for i = e, pos + 1, -1 do
    t[i] = t[i - 1]
  end
  t[pos] = value
end

local function remove(t, pos)
  if pos == nil then
    return real_remove(t) -- removing the last element shifts nothing
  end
  local size = #t
  if pos ~= size then
    pos = check_position(pos, size + 1, "remove")
  end
  local removed = t[pos]
  while pos < size do
    t[pos] = t[pos + 1]
    pos = pos + 1
  end
  t[pos] = nil
  return removed
end

-- table.sort compares in C without calling anything when no comparator is
-- given: a million copies of one long string take hours. Comparing through
-- a Lua function puts every comparison in the hook's sight.
local function less(a, b)
  return a < b
end

local function sort(t, comp)
  if comp == nil then
    comp = less
  end
  return real_sort(t, comp)
end

-- os.date runs strftime once per conversion of its format, in one C call.
local MAX_DATE_FORMAT = 256
local function date(format, time)
  if type(format) == "string" and #format > MAX_DATE_FORMAT then
    error("bad argument #1 to 'date' (format longer than " .. MAX_DATE_FORMAT .. " bytes)", 2)
  end
  return real_date(format, time)
end

local function print(...)
  local parts = {}
  for i = 1, select("#", ...) do
    parts[i] = tostring((select(i, ...)))
  end
  host_log(concat(parts, "\t"))
end

local function log(message)
  host_log(tostring(message))
end

-- What every run's environment starts as, built once: the safe base
-- functions, copies of the library tables with the bounded functions above
-- in place, and the host's. Never handed to a script: each run gets a copy.
local template = {}
for _, name in ipairs(SAFE_BASE) do
  template[name] = _G[name]
end
for name, lib in pairs(LIBRARIES) do
  template[name] = copy(lib)
end
template.string.rep = rep
template.table.move = move
template.table.insert = insert
template.table.remove = remove
template.table.sort = sort
template.os.date = date
template.coroutine.resume = resume
template.coroutine.close = close
template.coroutine.wrap = wrap
template.pcall = pcall
template.xpcall = xpcall
template.setmetatable = setmetatable
template.print = print
template.log = log
template._VERSION = _VERSION
template.json = { encode = host.json_encode, decode = host.json_decode, null = host.json_null }
template.response = host.response
-- Set for each run below; here so that the copies have room for them.
template._G = false
template.request = false
template.load = false

-- Copies of the template, made by one generated function whose body is a
-- single table constructor: `return { abs = v1, ..., string = { byte = v9,
-- ... }, ... }`, every value an upvalue. A constructor sizes each table
-- once, where copying key by key with `pairs` cost a call per key and a
-- rehash each time a table grew: that copy was most of a small run's time.
local function copier(t)
  local values, names = {}, {}
  local function constructor(tbl)
    local keys = {}
    for k in pairs(tbl) do
      keys[#keys + 1] = k
    end
    real_sort(keys)
    local fields = {}
    for i, k in ipairs(keys) do
      local v = tbl[k]
      if type(v) == "table" then
        fields[i] = string.format("[%q] = %s", k, constructor(v))
      else
        values[#values + 1] = v
        names[#names + 1] = "v" .. #values
        fields[i] = string.format("[%q] = v%d", k, #values)
      end
    end
    return "{ " .. concat(fields, ", ") .. " }"
  end
  local body = constructor(t)
  -- A chunk has at most 200 locals (and a function 255 upvalues).
  assert(#values < 200, "too many values in the environment's template")
  local source = "local " .. concat(names, ", ") .. " = ...\nreturn function() return " .. body .. " end"
  return assert(real_load(source, "=environment", "t"))(table.unpack(values, 1, #values))
end
local fresh_env = copier(template)

return function(request)
  -- math.random's state lives in the library itself: reseed it from the
  -- operating system's random source, so that no run can predict its own
  -- numbers nor the next run's (Lua's own seed is the time and an address).
  randomseed(seed())

  local env = fresh_env()
  env._G = env
  env.request = request

  -- Text chunks only, at most max_load bytes, and by default in this run's
  -- environment.
  env.load = function(chunk, name, _mode, chunk_env)
    if chunk_env == nil then
      chunk_env = env
    end
    local too_large = "chunk larger than " .. max_load .. " bytes"
    local refused = false
    if type(chunk) == "string" then
      if #chunk > max_load then
        return nil, too_large
      end
      may_compile(#chunk)
    elseif type(chunk) == "function" then
      local reader, size = chunk, 0
      chunk = function()
        local piece = reader()
        if type(piece) == "string" then
          size = size + #piece
          if size > max_load then
            refused = true
            error(too_large, 0)
          end
          may_compile(size)
        end
        return piece
      end
    end
    local f, err = real_load(chunk, name, "t", chunk_env)
    if refused then
      return nil, too_large
    end
    if f == nil and expired() then
      error(err, 0)
    end
    return f, err
  end

  return env, { __index = env.string }
end
