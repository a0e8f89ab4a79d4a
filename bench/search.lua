-- Search by subject and category:
-- GET /fhir/Observation?subject=Patient/{id}&category=survey for a random patient
-- (BENCH_CATEGORY overrides the category; survey is most of a patient's Observations;
-- BENCH_SEARCH_EXTRA is appended to the query, e.g. `&_include=Observation:subject`).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local patients
local category = os.getenv("BENCH_CATEGORY") or "survey"
local extra = os.getenv("BENCH_SEARCH_EXTRA") or ""

function init(args)
  patients = common.load_ids(args[1]).Patient
  assert(#patients > 0, "no Patient ids in " .. tostring(args[1]))
  common.seed_random()
end

function request()
  local p = patients[math.random(#patients)]
  return wrk.format("GET", "/fhir/Observation?subject=Patient/" .. p .. "&category=" .. category .. extra)
end
