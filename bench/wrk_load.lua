-- wrk's script for bench/http_processes.py `load()`: every request from the paths in the file
-- named by WRK_PATHS, in turn, with WRK_METHOD, WRK_BODY (JSON) and the headers in WRK_HEADERS
-- ("Name: value" lines). A `{n}` in a path becomes the request's number, so every request can
-- differ. At the end one JSON line: what was done and the latency percentiles.
local paths, headers, n = {}, {}, 0
for line in io.lines(os.getenv("WRK_PATHS")) do paths[#paths + 1] = line end
local header_file = os.getenv("WRK_HEADERS")
if header_file then
  for line in io.lines(header_file) do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    if name then headers[name] = value end
  end
end
local method, body = os.getenv("WRK_METHOD") or "GET", os.getenv("WRK_BODY")
if body then headers["Content-Type"] = "application/json" end

request = function()
  n = n + 1
  local path = paths[(n - 1) % #paths + 1]:gsub("{n}", tostring(n))
  return wrk.format(method, path, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "status_errors": %d, "connect_errors": %d, '
      .. '"read_errors": %d, "write_errors": %d, "timeouts": %d, "p50_us": %d, "p99_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
