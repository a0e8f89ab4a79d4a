-- Single ingest: POST /ingest/funktionsstatus, one new PADL record per request.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local ingest = dofile(dir .. "ingest_common.lua")

local prefix, n, headers

function init(args)
  prefix = ingest.prefix()
  n = 0
  headers = ingest.headers("application/json")
end

function request()
  n = n + 1
  return wrk.format("POST", "/ingest/funktionsstatus", headers, ingest.record(prefix, n))
end
