-- Read by id: GET /fhir/Observation/{id}, a random id from the id file each time.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local ids

function init(args)
  ids = common.load_ids(args[1]).Observation
  assert(#ids > 0, "no Observation ids in " .. tostring(args[1]))
  common.seed_random()
end

function request()
  return wrk.format("GET", "/fhir/Observation/" .. ids[math.random(#ids)])
end
