-- Create: POST /fhir/Observation with one of a small pool of distinct bodies
-- (P-ADL surveys and vital signs about random seeded patients). The server
-- answers with the stored resource (no Prefer header: the default return).
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local POOL = 64
local requests = {}

local padl = {
  { "d510", "Tvätta sig" }, { "d540", "Klä sig" }, { "d420", "Förflytta sig" },
  { "d530", "Sköta toalettbehov" }, { "d550", "Äta" },
}
local answers = { "Klarar själv", "Behöver viss hjälp", "Behöver mycket hjälp", "Klarar inte alls" }

local function body(i, patient)
  local when = string.format("2025-%02d-%02dT%02d:%02d:00+01:00",
    1 + i % 12, 1 + i % 28, 7 + i % 12, (i * 7) % 60)
  local head = '{"resourceType":"Observation","status":"final",' ..
    '"subject":{"reference":"Patient/' .. patient .. '"},"effectiveDateTime":"' .. when .. '",'
  if i % 4 == 0 then
    return head ..
      '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category",' ..
      '"code":"vital-signs"}]}],' ..
      '"code":{"coding":[{"system":"http://loinc.org","code":"29463-7","display":"Body weight"}]},' ..
      string.format('"valueQuantity":{"value":%d.%02d,"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}',
        50 + i % 40, (i * 25) % 100)
  end
  local comps = {}
  for k, item in ipairs(padl) do
    comps[k] = '{"code":{"coding":[{"system":"http://hl7.org/fhir/sid/icf","code":"' .. item[1] ..
      '","display":"' .. item[2] .. '"}]},"valueString":"' .. answers[1 + (i + k) % #answers] .. '"}'
  end
  return head ..
    '"category":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/observation-category",' ..
    '"code":"survey"}]}],' ..
    '"code":{"coding":[{"system":"https://nara-gateway.example/fhir/CodeSystem/bedomning",' ..
    '"code":"padl","display":"P-ADL-bedömning"}]},' ..
    '"component":[' .. table.concat(comps, ",") .. ']}'
end

function init(args)
  local patients = common.load_ids(args[1]).Patient
  assert(#patients > 0, "no Patient ids in " .. tostring(args[1]))
  common.seed_random()
  local headers = { ["Content-Type"] = "application/fhir+json" }
  for k, v in pairs(wrk.headers) do
    headers[k] = headers[k] or v
  end
  for i = 1, POOL do
    requests[i] = wrk.format("POST", "/fhir/Observation", headers,
      body(i, patients[1 + (i * 7919) % #patients]))
  end
end

function request()
  return requests[math.random(POOL)]
end
