-- Search by subject and category:
-- GET /fhir/Observation?subject=Patient/{id}&category=survey for a random patient
-- (BENCH_CATEGORY overrides the category; survey is most of a patient's Observations).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local patients
local category = os.getenv("BENCH_CATEGORY") or "survey"

function init(args)
  patients = common.load_ids(args[1]).Patient
  assert(#patients > 0, "no Patient ids in " .. tostring(args[1]))
  common.seed_random()
end

function request()
  local p = patients[math.random(#patients)]
  return wrk.format("GET", "/fhir/Observation?subject=Patient/" .. p .. "&category=" .. category)
end
