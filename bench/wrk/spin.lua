-- The spinners of the hello-under-lua scenario: every connection keeps one
-- request to a script that never ends (/lua/spin: `while true do end`) in
-- flight, so the server always has that many runs spinning to their time
-- limit. Their answers (503 when the limit holds) are counted by status.
-- At the end, one line `SPIN_JSON {...}` with the counts.

package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
require "report"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  report_statuses("SPIN_JSON", threads, summary, latency)
end
