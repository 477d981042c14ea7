-- wrk script: POST /v1/chat/completions with a small body.
--
-- Environment:
--   BENCH_KEY     the credential sent as "Authorization: Bearer ..." (required)
--   BENCH_STREAM  "1" for a streamed request ("stream": true)
--   BENCH_PATH    request path (default /v1/chat/completions)
--
-- done() prints one machine-readable line that run.sh parses:
--   RESULT requests=N duration_us=N rps=F p50_us=N p90_us=N p99_us=N p999_us=N max_us=N
--          connect_err=N read_err=N write_err=N timeout_err=N status_err=N

local key = os.getenv("BENCH_KEY") or "sk-bench"
local stream = os.getenv("BENCH_STREAM") == "1"
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"

local body
if stream then
  body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}],"stream":true}'
else
  body = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello to the benchmark."}]}'
end

wrk.method = "POST"
wrk.path = path
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

function done(summary, latency, requests)
  local secs = summary.duration / 1e6
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d rps=%.1f p50_us=%d p90_us=%d p99_us=%d p999_us=%d max_us=%d " ..
    "connect_err=%d read_err=%d write_err=%d timeout_err=%d status_err=%d\n",
    summary.requests, summary.duration, summary.requests / secs,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.timeout, e.status))
end
