#!/usr/bin/env bash
# The gateway beside the legs of each path (bench/src/bin/legs.rs: the smallest program doing
# the same job with the same hyper and the same bus client at the gateway's version), in one run:
#   nats, jetstream, amqp (confirms), kafka (idempotence; tansu, started by scripts/services.sh),
#   decide-nats, decide-amqp (each callback a request answered by `hookbus respond`).
# Both unsigned (no --token: the legs check nothing), prefix "bench", the 230-byte Live callback
# (bench/body-230.json, a Seq field added per request) or the gift (bench/body-gift.json).
# Per path:
# 1. Instructions per callback (user space, callgrind; the primary figure: it does not drift with
#    a shared machine): each program under callgrind, warmed by wrk -t1 -c16 for 2 s, drained,
#    its counters zeroed, loaded for $callgrind_seconds more, drained again (the publisher's work
#    counted), dumped; where the gateway's instructions went beside the legs', by crate and by
#    function (bench/profile.py compare): which part holds the gap.
# 2. Rounds (default 7), the two programs alternating (gateway first in odd rounds, the legs in
#    even ones): events saturated by wrk -t1 -c64 for $seconds; decisions at fixed rates ($RATES,
#    default "2000 5000") by the load generator (32 connections). CPU per event is the program's
#    utime + stime (/proc/PID/stat) from the load's start until everything it answered 200 was
#    confirmed by the bus, divided by those answers; events/s is the same answers over the same
#    time. Printed: the medians, their ratio, and each program's spread over the rounds.
# Every measurement checks its ledger: each callback answered 200 must be counted at a consumer
# or in the broker (NATS core: a subscriber on bench.>; JetStream: the stream's message count;
# RabbitMQ: the message count of an unbounded durable queue bound to the subject; Kafka: the
# topic's high watermark; the gateway's decisions: its replies counted in /metrics; the legs'
# decisions answer 200 only with a reply). At most 64 more may be counted than answered (requests
# in flight when the load stopped, accepted but whose answer the load no longer read); a
# measurement whose counts do not add up is void: it says so, and is left out of the medians.
# Usage: [PATHS="nats jetstream amqp kafka decide-nats decide-amqp"] [RATES="2000 5000"]
#        [NO_CALLGRIND=1] [GATEWAY_FLAGS="--threads 2"] bench/legs.sh [rounds, 7] [seconds, 5] [callgrind seconds, 4]
rounds=${1:-7}
callgrind_seconds=${3:-4}
source "$(dirname "$0")/setup.sh" "${2:-5}"
source "$(dirname "$0")/ledger.sh"
command -v valgrind >/dev/null || apt_install valgrind
paths=${PATHS:-nats jetstream amqp kafka decide-nats decide-amqp}
rates=${RATES:-2000 5000}
info=Live.CallbackAfterMemberStateChanged
gift=Live.CallbackBeforeSendGift
results=$log/legs.tsv
: >"$results"

command_line() { # path program → its command line on $port
  local flags
  case $1 in
    nats | decide-nats) flags="--bus nats --nats-url $nats" ;;
    jetstream) flags="--bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH" ;;
    amqp | decide-amqp) flags="--bus amqp --amqp-url $amqp" ;;
    kafka) flags="--bus kafka --kafka-brokers $kafka" ;;
  esac
  if [[ $2 == gateway ]]; then
    echo "$bin serve --listen 127.0.0.1:$port --sdk-app-id $app --prefix bench --instance-id bench $flags ${GATEWAY_FLAGS:-}"
  else
    echo "$legs $1 127.0.0.1:$port --prefix bench --kafka-brokers $kafka"
  fi
}

load() { # path connections seconds → wrk or the fixed-rate generator; sets ok, others, p50, p99
  local body=bench/body-230.json command=$info out
  [[ $1 == decide-* ]] && body=bench/body-gift.json command=$gift
  p50=- p99=-
  if [[ $1 == decide-* && -n ${rate:-} ]]; then
    out=$($load --url "http://127.0.0.1:$port/" --rate "$rate" --duration "$3s" --body $body --command $command \
      --sdk-app-id $app)
    read -r ok others p50 p99 < <(python3 -c 'import json, sys
f = json.loads(sys.argv[1]); print(f["ok"], f["errors"], f["p50_ms"], f["p99_ms"])' "$out")
  else
    out=$(BENCH_BODY=$body wrk -t1 -c"$2" -d"$3s" -s bench/post.lua \
      "http://127.0.0.1:$port/?$(query $command)")
    local responses
    responses=$(awk '/requests in/ { print $1 }' <<<"$out")
    others=$(awk '/Non-2xx/ { n += $5 } END { print n + 0 }' <<<"$out")
    ok=$((responses - others))
  fi
}

query() { echo "SdkAppid=$app&CallbackCommand=$1&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI"; }

# kind path program round → one line of $results:
# kind path program round rate ok others counted ledger cpu_us events_per_s p50 p99 instructions profile
measure() {
  local kind=$1 path=$2 program=$3 round=$4 out=$log/callgrind-$2-$3.out ready=/ before after ledger
  [[ $program == gateway ]] && ready=/readyz
  prepare "$path"
  if [[ $kind == callgrind ]]; then
    rm -f "$out"*
    start "$path-$program" valgrind --tool=callgrind --callgrind-out-file="$out" $(command_line "$path" "$program")
  else
    start "$path-$program" $(command_line "$path" "$program")
  fi
  local server=$pid
  wait_ready $ready >/dev/null
  if [[ $kind == callgrind ]]; then
    rate='' load "$path" 16 2
    drain "$path" "$program" || true
    callgrind_control --zero "$server" >/dev/null 2>&1
  else
    sleep 0.5
  fi
  before=$(counted "$path" "$program")
  local ticks started_ns
  ticks=$(cpu_ticks "$server")
  started_ns=$(date +%s%N)
  if [[ $kind == callgrind ]]; then rate='' load "$path" 16 "$callgrind_seconds"; else load "$path" 64 "$seconds"; fi
  local drained=1
  drain "$path" "$program" || drained=0
  local cpu=$(( $(cpu_ticks "$server") - ticks )) elapsed_ns=$(( $(date +%s%N) - started_ns ))
  after=$(counted "$path" "$program")
  local instructions=- profile=-
  if [[ $kind == callgrind ]]; then
    callgrind_control --dump "$server" >/dev/null 2>&1
    profile=$out.1
    instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$profile")
  fi
  stop "$server"
  ledger "$path" "$ok" "$before" "$after" $drained
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$path" "$program" "$round" \
    "${rate:--}" "$ok" "$others" "$count" "$ledger" \
    "$(awk -v t=$cpu -v hz="$clk_tck" -v n="$ok" 'BEGIN { printf "%.2f", (n > 0 ? t * 1e6 / hz / n : 0) }')" \
    "$(( ok * 1000000000 / elapsed_ns ))" "$p50" "$p99" "$instructions" "$profile" >>"$results"
  [[ $ledger == ok ]] || echo "$path, $program, round $round: VOID: $ledger" >&2
}

for path in $paths; do
  counter=
  [[ $path != nats ]] || count_nats
  responder=
  if [[ $path == decide-* ]]; then
    bus=${path#decide-}
    flags="--bus nats --nats-url $nats"
    [[ $bus == amqp ]] && flags="--bus amqp --amqp-url $amqp"
    $bin respond $flags --prefix bench --instance-id bench-responder >/dev/null 2>"$log/respond-$bus.log" &
    responder=$!
    until grep -q "answering requests" "$log/respond-$bus.log"; do sleep 0.05; done
  fi
  if [[ -z ${NO_CALLGRIND:-} ]]; then
    for program in gateway legs; do rate='' measure callgrind "$path" $program 0; done
  fi
  for round in $(seq 1 "$rounds"); do
    order="gateway legs"
    (( round % 2 )) || order="legs gateway"
    for program in $order; do
      if [[ $path == decide-* ]]; then
        for rate in $rates; do measure cpu "$path" $program "$round"; done
        rate=
      else
        rate= measure cpu "$path" $program "$round"
      fi
    done
  done
  uncount
  [[ -z $responder ]] || stop "$responder"
done
$admin jetstream-delete "$nats" HOOKBUS_BENCH

python3 - "$results" "$rounds" "$seconds" "$callgrind_seconds" <<'PY'
import importlib.util, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rounds, seconds, callgrind_seconds = sys.argv[2:]
KEYS = "kind path program round rate ok others counted ledger cpu rate_s p50 p99 instructions profile".split()
rows = [dict(zip(KEYS, row)) for row in rows]
void = [r for r in rows if r["ledger"] != "ok"]
good = [r for r in rows if r["ledger"] == "ok"]
NAMES = {"nats": "NATS core", "jetstream": "NATS JetStream", "amqp": "RabbitMQ (confirms)",
         "kafka": "Kafka (tansu, idempotence)", "decide-nats": "decisions over NATS",
         "decide-amqp": "decisions over RabbitMQ"}
INSTRUCTIONS = {"nats": 1.10}
def ratio(a, b):
    return a / b if b else float("nan")
def median(values):
    return statistics.median(values) if values else float("nan")
def spread(values):
    """(max − min) / median, as a percentage: how much the rounds of one program disagreed."""
    return 100 * (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0
def met(value, target, below=True):
    if value != value:
        return "—"
    return "met" if (value <= target if below else value >= target) else "not met"

print(f"Instructions: callgrind, wrk -t1 -c16 for {callgrind_seconds} s after a 2 s warm-up; CPU: median of "
      f"{rounds} alternating rounds, events by wrk -t1 -c64 for {seconds} s, decisions at fixed rates.")
print()
print("| path | measure | legs | gateway | ratio | target | met |")
print("|---|---|---|---|---|---|---|")
noise = []
for path in NAMES:
    mine = [r for r in good if r["path"] == path]
    if not mine:
        continue
    name = NAMES[path]
    per = {p: next((int(r["instructions"]) / int(r["ok"]) for r in mine
                    if r["kind"] == "callgrind" and r["program"] == p and int(r["ok"])), float("nan"))
           for p in ("legs", "gateway")}
    target = INSTRUCTIONS.get(path, 1.15)
    r_ = ratio(per["gateway"], per["legs"])
    if per["legs"] == per["legs"]:
        print(f"| {name} | instructions per callback | {per['legs']:,.0f} | {per['gateway']:,.0f} | {r_:.2f} | "
              f"≤ {target:.2f} | {met(r_, target)} |")
    for rate in sorted({r["rate"] for r in mine if r["kind"] == "cpu"}, key=lambda x: (x != "-", x)):
        cpu = {p: [float(r["cpu"]) for r in mine if r["kind"] == "cpu" and r["program"] == p and r["rate"] == rate]
               for p in ("legs", "gateway")}
        if not cpu["legs"] or not cpu["gateway"]:
            continue
        at = "" if rate == "-" else f" at {int(rate):,}/s"
        target = 1.3 if path == "decide-amqp" else 1.2
        c = {p: median(v) for p, v in cpu.items()}
        print(f"| {name} | CPU µs per {'decision' if path.startswith('decide') else 'event'}{at} | {c['legs']:.2f} | "
              f"{c['gateway']:.2f} | {ratio(c['gateway'], c['legs']):.2f} | ≤ {target} | "
              f"{met(ratio(c['gateway'], c['legs']), target)} |")
        for p in ("legs", "gateway"):
            noise.append(f"{name}{at}, {p}: CPU {min(cpu[p]):.2f}–{max(cpu[p]):.2f} µs over {len(cpu[p])} rounds "
                         f"(spread {spread(cpu[p]):.0f} % of the median)")
        if rate == "-":
            rate_s = {p: median([int(r["rate_s"]) for r in mine if r["kind"] == "cpu" and r["program"] == p])
                      for p in ("legs", "gateway")}
            rr = ratio(rate_s["gateway"], rate_s["legs"])
            tgt = "≥ 0.85" if path == "jetstream" else "—"
            print(f"| {name} | events/s confirmed, saturated | {rate_s['legs']:,.0f} | {rate_s['gateway']:,.0f} | "
                  f"{rr:.2f} | {tgt} | {met(rr, 0.85, below=False) if path == 'jetstream' else '—'} |")
        else:
            lat = {p: {q: [float(r[q]) for r in mine if r["kind"] == "cpu" and r["program"] == p and r["rate"] == rate]
                       for q in ("p50", "p99")} for p in ("legs", "gateway")}
            for q, target in (("p50", 0.3), ("p99", 1.0)):
                legs_q, gateway_q = median(lat["legs"][q]), median(lat["gateway"][q])
                over = gateway_q - legs_q
                print(f"| {name} | {q} ms{at} | {legs_q:.2f} | {gateway_q:.2f} | +{over:.2f} ms | "
                      f"≤ +{target} ms | {met(over, target)} |")
print()
print("Noise (each program's CPU per event over its rounds):")
for line in noise:
    print(f"- {line}")
if void:
    print()
    print(f"VOID: {len(void)} measurement(s) whose ledger did not add up (left out above):")
    for r in void:
        print(f"- {r['path']}, {r['program']}, {r['kind']} round {r['round']}: {r['ledger']}")
print()
print("Each measurement (kind, path, program, round, rate, answered 200, other answers, counted, ledger, "
      "CPU µs per event, events/s, p50, p99, instructions):")
for r in rows:
    print("- " + ", ".join(r[k] for k in KEYS[:-1]))
spec = importlib.util.spec_from_file_location("profile_", "bench/profile.py")  # not the standard library's
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)
for path in NAMES:
    pair = {r["program"]: r for r in good if r["kind"] == "callgrind" and r["path"] == path and int(r["ok"])}
    if len(pair) == 2:
        print()
        profile.compare(pair["gateway"]["profile"], int(pair["gateway"]["ok"]), pair["legs"]["profile"],
                        int(pair["legs"]["ok"]), f"the gateway on {NAMES[path]}")
PY
