-- wrk script: full calls against ocs's HTTP API. Each connection authorizes a
-- call (POST /v1/calls), and the next request stops the call it was granted
-- (POST /v1/calls/{id}/stop, 45 s). Accounts b0..b(ACCOUNTS-1) must exist.
local headers = { ["Content-Type"] = "application/json" }
local accounts = tonumber(os.getenv("ACCOUNTS") or "100")
local counter = 0
local pending = {}
local tag = ""

function setup(thread)
  thread:set("tag", tostring(math.random(1, 1000000000)))
end

function init(args)
  tag = tostring(math.random(1, 1000000000)) .. "-" .. tostring(os.time())
end

function request()
  local call_id = table.remove(pending)
  if call_id then
    return wrk.format("POST", "/v1/calls/" .. call_id .. "/stop", headers, '{"duration": 45}')
  end
  counter = counter + 1
  local body = string.format(
    '{"account": "b%d", "destination": "447700900123", "call_id": "w%s-%d"}',
    counter % accounts, tag, counter)
  return wrk.format("POST", "/v1/calls", headers, body)
end

function response(status, headers, body)
  if status == 201 then
    local call_id = string.match(body, '"call_id":%s*"([^"]+)"')
    if call_id then
      table.insert(pending, call_id)
    end
  end
end
