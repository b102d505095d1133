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
local real_resume, real_close = coroutine.resume, coroutine.close
local randomseed = math.randomseed
local expired, host_log = host.expired, host.log

-- Nothing may dump a function, not even through ("").dump.
string.dump = nil

local SAFE_BASE = {
  "assert", "error", "getmetatable", "ipairs", "next", "pairs", "rawequal",
  "rawget", "rawlen", "rawset", "select", "tonumber", "tostring", "type",
}
local base = {}
for _, name in ipairs(SAFE_BASE) do
  base[name] = _G[name]
end

local LIBRARIES = {
  string = string,
  table = table,
  math = math,
  utf8 = utf8,
  coroutine = coroutine,
  os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime },
}

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

local function close(...)
  return unless_expired(real_close(...))
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

return function(request)
  -- math.random's state lives in the library itself: reseed it so no run
  -- can predict the next one's numbers.
  randomseed()

  local env = copy(base)
  for name, lib in pairs(LIBRARIES) do
    env[name] = copy(lib)
  end
  env.coroutine.resume = resume
  env.coroutine.close = close
  env.pcall = pcall
  env.xpcall = xpcall
  env.setmetatable = setmetatable
  env.print = print
  env.log = log
  env._VERSION = _VERSION
  env._G = env

  -- Text chunks only, and by default in this run's environment.
  env.load = function(chunk, name, _mode, chunk_env)
    if chunk_env == nil then
      chunk_env = env
    end
    local f, err = real_load(chunk, name, "t", chunk_env)
    if f == nil and expired() then
      error(err, 0)
    end
    return f, err
  end

  env.json = { encode = host.json_encode, decode = host.json_decode, null = host.json_null }
  env.response = host.response
  env.request = request

  return env, { __index = env.string }
end
