-- wrk script: POST one chat-completions request per call and print a JSON summary.
-- Usage: wrk -s chat.lua URL -- MODEL API_KEY STREAM(0|1)
-- The summary line starts with "BENCH_JSON " so the harness can find it.

local request_bytes

function init(args)
  local model = args[1] or "bench"
  local key = args[2] or "sk-bench"
  local stream = args[3] == "1"
  local body = '{"model":"' .. model .. '","messages":['
    .. '{"role":"system","content":"You are a helpful assistant."},'
    .. '{"role":"user","content":"Say hello in one short sentence."}],'
    .. '"max_tokens":32,"temperature":0'
    .. (stream and ',"stream":true' or '')
    .. '}'
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Authorization"] = "Bearer " .. key
  request_bytes = wrk.format("POST", nil, headers, body)
end

function request()
  return request_bytes
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
