-- Search with _include: GET /fhir/Observation?subject=Patient/{id}&category=survey
-- &_include=Observation:subject for a random patient (the page plus its Patient).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local patients

function init(args)
  patients = common.load_ids(args[1]).Patient
  assert(#patients > 0, "no Patient ids in " .. tostring(args[1]))
  common.seed_random()
end

function request()
  local p = patients[math.random(#patients)]
  return wrk.format("GET", "/fhir/Observation?subject=Patient/" .. p .. "&category=survey&_include=Observation:subject")
end
