-- wrk: POST the body in $BENCH_BODY to the URL given on the command line (query included),
-- each request with its own "Seq" field, unique across runs too (a run's own id first): the same
-- signed request twice is a replay, which the gateway answers from its cache without publishing,
-- and a second run with the same signed URL (a measurement after its warm-up) would otherwise
-- send the first run's bodies again.
wrk.method = "POST"
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"

local uuid = assert(io.open("/proc/sys/kernel/random/uuid", "r"))
local run = uuid:read("*l"):sub(1, 8)  -- 32 random bits: enough to tell runs apart
uuid:close()

local threads = 0
function setup(thread)
  thread:set("id", run .. "-" .. threads)
  threads = threads + 1
end

local sent = 0
function request()
  sent = sent + 1
  local body = wrk.body:gsub("^%s*{", '{"Seq":"' .. tostring(id) .. "-" .. sent .. '",', 1)
  return wrk.format(nil, nil, nil, body)
end
