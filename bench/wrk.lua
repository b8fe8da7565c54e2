-- What bench/speed.py has wrk send, and how wrk reports back.
--
-- BENCH_MODE (environment): "fixed" (default) sends the URL given to wrk;
-- "get-random" sends GET /api/engines/<id> and "patch-random" sends
-- PATCH /api/engines/<id> {"thrust": n}, each with a random id from 1 to
-- BENCH_IDS. At the end it prints one line, "bench-result {json}", with
-- exact figures (latencies in microseconds) rather than wrk's rounded text.

local mode = os.getenv("BENCH_MODE") or "fixed"
local ids = tonumber(os.getenv("BENCH_IDS") or "1")
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  -- Each thread its own sequence of ids, different from run to run.
  math.randomseed(os.time() * 1000 + (thread_number or 0))
end

if mode == "get-random" then
  request = function()
    return wrk.format("GET", "/api/engines/" .. math.random(1, ids))
  end
elseif mode == "patch-random" then
  local headers = {["Content-Type"] = "application/json"}
  request = function()
    local body = '{"thrust": ' .. math.random(0, 100000) .. '}'
    return wrk.format("PATCH", "/api/engines/" .. math.random(1, ids), headers, body)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'bench-result {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, '
    .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
