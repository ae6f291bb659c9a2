-- wrk script for the bridge: POST a BridgeEvent with a unique eventId/messageId per request.
-- wrk -s bench/bridge.lua URL -- PREFIX TOKEN CONNECTION_ID
local threads = {}
local next_tid = 0

function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1] or "run"
  conn = args[3] or "conn_bench"
  counter = 0
  non200 = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (args[2] or "")
end

function request()
  counter = counter + 1
  local id = prefix .. "_" .. tid .. "_" .. counter
  local body = string.format(
    '{"eventId":"evt_%s","timestamp":"2026-06-02T09:30:00Z","deliveryAttempt":1,"connectionId":"%s",' ..
    '"channelId":"%s","kind":"echo","accountId":"acct_bench","peerId":"peer_%d","peerType":"dm",' ..
    '"messageId":"msg_%s","messageType":"text","content":"hello %s","metadata":{}}',
    id, conn, conn, counter % 64, id, id)
  return wrk.format("POST", "/api/channel-connector-bridge/events", nil, body)
end

function response(status, headers, body)
  if status ~= 200 then non200 = non200 + 1 end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("non200") or 0) end
  io.write(string.format("BENCH_NON200 %d\n", bad))
  io.write(string.format("BENCH_P50_US %d\n", latency:percentile(50)))
  io.write(string.format("BENCH_P99_US %d\n", latency:percentile(99)))
end
