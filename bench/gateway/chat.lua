-- wrk script: POST one chat-completions request per call and print a JSON summary.
-- Usage: wrk -s chat.lua URL -- MODEL API_KEY STREAM(0|1)
-- The summary line starts with "BENCH_JSON " so the harness can find it.

-- Every request differs (a counter in the user message), so no target can answer
-- from a cache: what is measured is the full path to the upstream.

local head, tail, headers
local counter = 0

function init(args)
  local model = args[1] or "bench"
  local key = args[2] or "sk-bench"
  local stream = args[3] == "1"
  head = '{"model":"' .. model .. '","messages":['
    .. '{"role":"system","content":"You are a helpful assistant."},'
    .. '{"role":"user","content":"Say hello in one short sentence. #'
  tail = '"}],"max_tokens":32,"temperature":0'
    .. (stream and ',"stream":true' or '')
    .. '}'
  headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. key
end

function request()
  counter = counter + 1
  return wrk.format("POST", nil, headers, head .. counter .. tail)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.2f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
