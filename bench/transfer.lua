-- Transfer creation: POST /ingest/dokument as the region (a discharge message
-- from a hospital ward to Hemsjukvården Lund: DocumentReference, Binary and a
-- transfer Task), each with a new recordId and distinct document content.
local dir = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local ingest = dofile(dir .. "ingest_common.lua")

local template, prefix, n, headers

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function base64(s)
  return ((s:gsub(".", function(c)
    local bits, b = "", c:byte()
    for i = 8, 1, -1 do bits = bits .. (b % 2 ^ i - b % 2 ^ (i - 1) > 0 and "1" or "0") end
    return bits
  end) .. "0000"):gsub("%d%d%d?%d?%d?%d?", function(x)
    if #x < 6 then return "" end
    local c = 0
    for i = 1, 6 do c = c + (x:sub(i, i) == "1" and 2 ^ (6 - i) or 0) end
    return alphabet:sub(c + 1, c + 1)
  end) .. ({ "", "==", "=" })[#s % 3 + 1])
end

function init(args)
  local f = assert(io.open(dir .. "../../shared/testdata/dokument-utskrivning.json", "r"))
  template = f:read("*a")
  f:close()
  prefix = ingest.prefix()
  n = 0
  headers = ingest.headers("application/json")
end

function request()
  n = n + 1
  local id = prefix .. "-" .. n
  local body = template:gsub('"recordId": "[^"]*"', '"recordId": "' .. id .. '"', 1)
  body = body:gsub('"data": "[^"]*"', '"data": "' .. base64("%PDF-1.4\n% utskrivningsmeddelande " .. id .. "\n") .. '"', 1)
  return wrk.format("POST", "/ingest/dokument", headers, body)
end
