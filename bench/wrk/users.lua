-- Users scenarios. Arguments after `--`: MODE IDS_FILE NONCE
--   MODE get:  GET /users/{id} of an id picked at random from IDS_FILE
--   MODE post: POST /users with a unique email (NONCE, thread number, counter)
--   MODE mix:  9 GETs then 1 POST, over and over (a 90/10 read/write mix)
--   MODE list: GET /users?limit=100&after={id}, id picked at random from IDS_FILE
--   MODE email: GET /users?email={email}, email picked at random from IDS_FILE
--               (then a file of emails)
-- Requests are built once per id in init(), so wrk spends its time sending.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "report"

local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("thread_no", threads)
end

local mode, nonce, n
local gets = {}

function init(args)
  mode, nonce = args[1], args[3]
  n = 0
  if mode ~= "post" then
    local prefix = ({ list = "/users?limit=100&after=", email = "/users?email=" })[mode] or "/users/"
    for id in io.lines(args[2]) do
      gets[#gets + 1] = wrk.format("GET", prefix .. id)
    end
    assert(#gets > 0, "no user ids in " .. args[2])
  end
  math.randomseed(os.time() + thread_no)
end

local json = { ["Content-Type"] = "application/json" }

local function post()
  local body = string.format(
    '{"email":"bench-%s-%d-%d@example.com","accountEnabled":true,' ..
    '"displayName":"Bench User","givenName":"Bench","surname":"User",' ..
    '"companyName":"skiff bench"}', nonce, thread_no, n)
  return wrk.format("POST", "/users", json, body)
end

function request()
  n = n + 1
  if mode == "post" or (mode == "mix" and n % 10 == 0) then
    return post()
  end
  return gets[math.random(#gets)]
end
