-- Batch ingest: POST /ingest/funktionsstatus/batch with BENCH_BATCH (default 100)
-- new PADL records as NDJSON per request. Records/s = requests/s x BENCH_BATCH.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local ingest = dofile(dir .. "ingest_common.lua")

local batch = tonumber(os.getenv("BENCH_BATCH") or "100")
local prefix, n, headers

function init(args)
  prefix = ingest.prefix()
  n = 0
  headers = ingest.headers("application/x-ndjson")
end

function request()
  local lines = {}
  for i = 1, batch do
    n = n + 1
    lines[i] = ingest.record(prefix, n)
  end
  return wrk.format("POST", "/ingest/funktionsstatus/batch", headers, table.concat(lines, "\n"))
end
