-- Shared by the ingest scripts: funktionsstatus (PADL) records with unique
-- recordIds and Luhn-valid personnummer of synthetic patients (born 1920-1950,
-- as bench/seed.py), and a response check that counts rejected receipts too.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local common = dofile(dir .. "common.lua")

local ingest = {}
ingest.common = common

local function luhn(nine)
  local sum = 0
  for i = 1, 9 do
    local v = tonumber(nine:sub(i, i)) * ((i % 2 == 1) and 2 or 1)
    sum = sum + math.floor(v / 10) + v % 10
  end
  return (10 - sum % 10) % 10
end

local function personnummer(n)
  local year = 1920 + n % 31
  local month = 1 + math.floor(n / 31) % 12
  local day = 1 + math.floor(n / 372) % 28
  local serial = 100 + math.floor(n / 10416) % 900
  local nine = string.format("%02d%02d%02d%03d", year % 100, month, day, serial)
  return string.format("%04d%02d%02d%03d%d", year, month, day, serial, luhn(nine))
end

local activities = { "personlig hygien", "på/avklädning", "förflyttning", "toalettbesök", "födointag" }
local answers = { "Klarar sig själv", "Behöver viss hjälp", "Behöver mycket hjälp", "Klarar inte alls" }

-- One PADL record; `n` makes the recordId and picks the patient (1,000 patients).
function ingest.record(prefix, n)
  local padl = {}
  for k, a in ipairs(activities) do
    padl[k] = '{"activity":"' .. a .. '","assessment":"' .. answers[1 + (n + k) % #answers] .. '"}'
  end
  return '{"recordId":"' .. prefix .. '-' .. n .. '","sourceSystem":"SE2120001231-EHR1","municipality":"1281",' ..
    '"patient":{"personnummer":"' .. personnummer(n % 1000) .. '"},' ..
    '"careUnit":{"hsaId":"SE2120001231-HSL1","name":"Hemsjukvården Lund (fiktiv)"},' ..
    '"careGiver":{"hsaId":"SE2120001231-0001","name":"Lunds kommun (fiktiv)"},' ..
    '"author":{"hsaId":"SE2120001231-AT' .. (10 + n % 20) .. '","name":"Arbetsterapeut ' .. (n % 20) .. '","role":"Arbetsterapeut"},' ..
    string.format('"assessedAt":"2025-%02d-%02dT%02d:%02d:00+01:00",', 1 + n % 12, 1 + n % 28, 7 + n % 10, n % 60) ..
    '"approvedForPatient":true,"category":"padl","comment":"Bedömning ' .. n .. '",' ..
    '"padl":[' .. table.concat(padl, ",") .. ']}'
end

-- Request headers: `content_type` plus wrk's own (the Authorization header).
function ingest.headers(content_type)
  local headers = { ["Content-Type"] = content_type }
  for k, v in pairs(wrk.headers) do
    headers[k] = headers[k] or v
  end
  return headers
end

-- A prefix unique to this thread and run, so every record is new.
function ingest.prefix()
  common.seed_random()
  return string.format("bench-%d-%d-%d", os.time(), thread_no or 0, math.random(1, 1e9))
end

-- Counts non-2xx answers and rejected receipts as failures.
local base_response = response
function response(status, headers, body)
  if status >= 200 and status <= 299 and body and body:find('"status":"rejected"', 1, true) then
    status = 422
  end
  base_response(status, headers, body)
end

return ingest
