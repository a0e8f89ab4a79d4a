-- Shared by the wrk scripts: the id file, the optional bearer token, counting
-- non-2xx answers per thread, and the summary that `done` prints (a
-- `BENCH_RESULT {json}` line that bench/run.sh reads) and fails on when any
-- request was answered with a non-2xx status or failed at the socket.
--
-- A script is run as `wrk ... -s bench/NAME.lua URL -- IDS_FILE`.

local common = {}

wrk.headers["Accept"] = "application/fhir+json"
local token = os.getenv("BENCH_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

-- Reads `Patient/ID` and `Observation/ID` lines.
function common.load_ids(path)
  if not path then
    error("usage: wrk ... -s SCRIPT URL -- IDS_FILE")
  end
  local f = assert(io.open(path, "r"))
  local ids = { Patient = {}, Observation = {} }
  for line in f:lines() do
    local ty, id = line:match("^(%a+)/([%w%-%.]+)$")
    if ty and ids[ty] then
      table.insert(ids[ty], id)
    end
  end
  f:close()
  return ids
end

-- A different random sequence in every thread and run.
function common.seed_random()
  local addr = tonumber(tostring({}):match("0x(%x+)") or "0", 16) or 0
  math.randomseed((os.time() * 7919 + (thread_no or 0) * 104729 + addr) % 2147483647)
end

-- Per-thread counters, read by `done` through thread:get.
non2xx = 0
first_bad = nil

function response(status, headers, body)
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if not first_bad then
      first_bad = status .. " " .. string.sub(body or "", 1, 600)
    end
  end
end

local threads = {}
local thread_no = 0

function setup(thread)
  thread_no = thread_no + 1
  thread:set("thread_no", thread_no)
  table.insert(threads, thread)
end

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' end
    if c == "\\" then return "\\\\" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

function done(summary, latency, requests)
  local bad, example = 0, nil
  for _, t in ipairs(threads) do
    bad = bad + (t:get("non2xx") or 0)
    example = example or t:get("first_bad")
  end
  local e = summary.errors
  local socket_errors = e.connect + e.read + e.write + e.timeout
  local seconds = summary.duration / 1e6
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"seconds":%.3f,"rps":%.1f,' ..
    '"p50_ms":%.3f,"p90_ms":%.3f,"p99_ms":%.3f,"max_ms":%.3f,' ..
    '"non2xx":%d,"socket_errors":%d,"first_error":%s}\n',
    summary.requests, seconds, summary.requests / seconds,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000,
    bad, socket_errors, example and json_string(example) or "null"))
  if bad > 0 or socket_errors > 0 then
    io.stderr:write(string.format(
      "\nBENCHMARK FAILED: %d non-2xx answers, %d socket errors (connect %d, read %d, write %d, timeout %d)\n",
      bad, socket_errors, e.connect, e.read, e.write, e.timeout))
    if example then
      io.stderr:write("first non-2xx answer: " .. example .. "\n")
    end
    io.stderr:flush()
    os.exit(1)
  end
end

return common
