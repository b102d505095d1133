-- The soak's mixed load (bench/soak). Each connection cycles through
--   POST /users, GET /users/{id}, GET /hello, GET /time, GET /users?limit=20,
--   GET /, DELETE /users/{id} of an old user, GET /healthz
-- so the table stays small (every user made is deleted a little later)
-- while every route family and both database paths keep working.
-- Argument after `--`: NONCE (keeps emails unique across runs).
-- At the end, one line `SOAK_JSON {...}` with the counts.

package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "report"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_no", #threads)
end

local nonce, n, made
local live = {}      -- ids of users made and not yet deleted, oldest first
local json = { ["Content-Type"] = "application/json" }
-- Users kept alive before the oldest is deleted. A GET names the newest user
-- when it is sent; with 32 kept, a GET stalled behind slow commits (PostgreSQL
-- on a busy machine: 2 s) found its user already deleted by the time it ran,
-- a 404 that was the script's race, not the server's. 2048 covers stalls of
-- over a second at the soak's rates (about 1,300 creates/s per thread).
local keep = 2048

function init(args)
  nonce = args[1] or "soak"
  n, made = 0, 0
  statuses = {}
end

function request()
  n = n + 1
  local step = n % 8
  if step == 0 then
    made = made + 1
    local body = string.format(
      '{"email":"soak-%s-%d-%d@example.com","displayName":"Soak %d"}',
      nonce, thread_no, made, made)
    return wrk.format("POST", "/users", json, body)
  elseif step == 1 and #live > 0 then
    return wrk.format("GET", "/users/" .. live[#live])
  elseif step == 2 then
    return wrk.format("GET", "/hello")
  elseif step == 3 then
    return wrk.format("GET", "/time?tz=Europe/Paris")
  elseif step == 4 then
    return wrk.format("GET", "/users?limit=20")
  elseif step == 5 then
    return wrk.format("GET", "/")
  elseif step == 6 and #live > keep then
    return wrk.format("DELETE", "/users/" .. table.remove(live, 1))
  end
  return wrk.format("GET", "/healthz")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 201 then
    local location = headers["Location"] or headers["location"]
    if location then
      table.insert(live, (string.gsub(location, "^/users/", "")))
    end
  end
end

function done(summary, latency, requests)
  report_statuses("SOAK_JSON", threads, summary, latency)
end
