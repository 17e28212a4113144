-- wrk script of bench/transport.sh: POSTs the v2 REST body in the file $TRANSPORT_BODY as JSON,
-- with `Authorization: Bearer $TRANSPORT_TOKEN` when that is set, and prints the run as one line
-- `WRK_JSON {...}` (counts, errors, latency percentiles in µs) for bench/python/transport_bench.py.
local f = assert(io.open(os.getenv("TRANSPORT_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
local token = os.getenv("TRANSPORT_TOKEN")
if token and token ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. token
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, '
      .. '"write": %d, "status": %d, "timeout": %d}, "latency_us": {"p50": %d, "p90": %d, "p99": %d, '
      .. '"max": %d, "mean": %.1f, "stdev": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    latency.stdev))
end
