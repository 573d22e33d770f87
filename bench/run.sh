#!/usr/bin/env bash
# Benchmarks hookbus side by side with a bare hyper server (the ceiling), on every bus, in one
# run, and prints a Markdown table. Saturation: wrk, 1 thread, 64 connections, counting 200s
# only; CPU per request is the server's utime + stime over that run (/proc/PID/stat) divided by
# every answer wrk counted. Latency: the fixed-rate generator (bench/src/bin/load.rs) at half the
# saturation rate (or $rate), 32 connections, without coordinated omission. For the rows that
# sweep, latency also at 10, 25, 75 and 90 % of the saturation rate (3 s each, less when the
# measurements are shorter), into target/bench/latency.tsv, drawn into target/bench/latency.png by bench/plot.sh.
# Every row checks its ledger (bench/ledger.sh): each callback answered 200 over the row's
# saturation and fixed rates is counted once the gateway drained (NATS core: a subscriber on
# bench.>; JetStream: the stream's message count; RabbitMQ: an unbounded durable queue bound to
# the subject; Kafka: the topic's high watermark; decisions: the gateway's replies in /metrics);
# the bare lapin client's confirms are counted in that queue too. A void row prints VOID instead
# of its figures, and its latency stays out of $tsv. The ceiling (publishes nothing) and the
# stdout rows (to /dev/null) cannot be counted: the ledger under the table says so.
# Usage: bench/run.sh [seconds per measurement, default 10]
source "$(dirname "$0")/setup.sh"
source "$(dirname "$0")/ledger.sh"
tsv=target/bench/latency.tsv
mkdir -p target/bench
sweep_seconds=$(( seconds < 3 ? seconds : 3 ))

rss() { awk -v key="$2:" '$1 == key { print int($2 / 1024) }' "/proc/$1/status"; }

ledgers=()  # each row's ledger, printed under the table

# Events the gateway on $port has had confirmed by its bus so far (0 from the ceiling).
confirmed() { metric hookbus_publishes_confirmed_total ''; }

# The rows whose latency is also measured, and drawn, against the offered rate.
swept_rows=("ceiling (bare hyper)" "NATS core" "NATS JetStream" "RabbitMQ (confirms)" "Kafka (tansu)"
  "decisions over nats (hookbus respond)")
swept() { # name → whether its row sweeps
  local row
  for row in "${swept_rows[@]}"; do [[ $row != "$1" ]] || return 0; done
  return 1
}

# name rate seconds body command → the fixed-rate generator's JSON line; in a row that sweeps,
# also a line of $tsv.row (moved to $tsv once the row's ledger is ok); adds its 200s to $answered
fixed_rate() {
  local offered=$(( $2 > 0 ? $2 : 1 )) out
  out=$($load --url "http://127.0.0.1:$port/" --rate $offered --duration "$3s" --body "$4" --command "$5" \
    --token "$token")
  if swept "$1"; then
    python3 -c 'import json, sys
f = json.loads(sys.argv[3])
print(sys.argv[1], sys.argv[2], int(f["rate"]), f["p50_ms"], f["p99_ms"], f["errors"], sep="\t")' \
      "$1" $offered "$out" >>"$tsv.row"
  fi
  answered=$(( answered + $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ok"])' "$out") ))
  echo "$out" >"$log/fixed.json"
}

ceiling_rps= ceiling_cpu=
# name bus body command ready-path program args... : one row of the table. The bus is the
# ledger's (bench/ledger.sh: ceiling, stdout, nats, jetstream, amqp, kafka, decide-BUS); before
# the drain, the row runs $before_drain (the paused broker resumed); with $retried, the ledger
# allows the outbox's retries after that outage (bench/ledger.sh).
measure() {
  local name=$1 bus=$2 body=$3 command=$4 ready=$5 pid
  shift 5
  : >"$tsv.row"
  prepare $bus
  start "$name" "$@"
  local start_ms
  start_ms=$(wait_ready "$ready")
  sleep 0.5
  local idle before
  idle=$(rss $pid VmRSS)
  before=$(counted $bus gateway)
  # Saturation counts answers 200 only: a 503 from a full outbox is cheap and says nothing.
  local confirmed_before
  confirmed_before=$(confirmed)
  saturate $pid "$body" "$(url "$command")"
  confirmed_rps=$(( ($(confirmed) - confirmed_before) / seconds ))
  answered=$(( responses - errors ))
  local fixed
  fixed_rate "$name" "${rate:-$((rps / 2))}" "$seconds" "$body" "$command"
  fixed=$(<"$log/fixed.json")
  local peak
  peak=$(rss $pid VmHWM)
  if swept "$name"; then
    for percent in 10 25 75 90; do
      fixed_rate "$name" $((rps * percent / 100)) "$sweep_seconds" "$body" "$command"
    done
  fi
  ${before_drain:-}
  settle $bus gateway $answered "$before" ${retried:-0}
  stop $pid
  ledgers+=("$name: $ledger$([[ $ledger != ok ]] || echo " ($answered answered 200, $count counted)")$(
    [[ -z ${retried:-} ]] || echo "; at least once: the outbox publishes again what the paused broker had not confirmed")")
  if [[ $ledger == void* ]]; then
    echo "$name: VOID: ${ledger#void: }" >&2
  else
    cat "$tsv.row" >>"$tsv"
  fi
  [[ -n $ceiling_rps ]] || { ceiling_rps=$rps; ceiling_cpu=$cpu_us; }
  python3 - "$name" "$rps" "$ceiling_rps" "$errors" "$cpu_us" "$ceiling_cpu" "$fixed" "$idle" "$peak" "$start_ms" "$ledger" <<'PY'
import json, sys
name, rps, ceiling, errors, cpu, ceiling_cpu, fixed, idle, peak, start, ledger = sys.argv[1:]
if ledger.startswith("void"):
    print(f"| {name} | VOID | — | — | — | — | — | — | — | — | — | — | — | — |")
    sys.exit()
f = json.loads(fixed)
cpu_ratio = f"{float(cpu) / float(ceiling_cpu):.2f}" if float(ceiling_cpu) > 0 else "—"
print(f"| {name} | {int(rps):,} | {int(rps) / max(int(ceiling), 1):.2f} | {errors} | {float(cpu):.1f} | "
      f"{cpu_ratio} | {int(f['rate']):,} | "
      f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['errors']} | {idle} | {peak} | {start} |")
PY
}

# The bare RabbitMQ client (bench/src/bin/admin.rs amqp-flood), with the gateway's publishing settings:
# its confirmed/s in the saturation column and its CPU per confirmed message; nacked and returned
# messages under errors. Its ledger: every message confirmed is in the queue.
bare_amqp() {
  local before confirmed
  prepare amqp
  before=$(counted amqp client)
  bare=$($admin amqp-flood "$amqp" tencent "bench.$info" "$seconds" bench/body-1k.json)
  confirmed=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["confirmed"])' "$bare")
  ledger amqp "$confirmed" "$before" "$(counted amqp client)" 1
  ledgers+=("bare lapin client: $ledger$([[ $ledger != ok ]] || echo " ($confirmed confirmed, $count counted)")")
  [[ $ledger != void* ]] || echo "bare lapin client: VOID: ${ledger#void: }" >&2
  python3 - "$bare" "$ceiling_rps" "$ceiling_cpu" "$clk_tck" "$ledger" <<'PY'
import json, sys
bare, ceiling, ceiling_cpu, hz, ledger = sys.argv[1:]
if ledger.startswith("void"):
    print("| bare lapin client (persistent, mandatory, confirms, 512 in flight) | VOID | — | — | — | — | — | — | — | — | — | — | — | — |")
    sys.exit()
b = json.loads(bare)
cpu = b["cpu_ticks"] * 1e6 / int(hz) / max(b["confirmed"], 1)
cpu_ratio = f"{cpu / float(ceiling_cpu):.2f}" if float(ceiling_cpu) > 0 else "—"
print(f"| bare lapin client (persistent, mandatory, confirms, 512 in flight) | {int(b['rate']):,} | "
      f"{b['rate'] / max(int(ceiling), 1):.2f} | — | {cpu:.1f} | {cpu_ratio} | — | — | — | — | "
      f"{b['nacked'] + b['returned']} | — | — | — |")
PY
}

info=Live.CallbackAfterMemberStateChanged
gift=Live.CallbackBeforeSendGift
{
  echo "# $(date -u +%Y-%m-%d), $(nproc) vCPU $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), bench/run.sh $seconds"
  printf '# configuration\toffered rate\tachieved rate\tp50 ms\tp99 ms\terrors\n'
} >"$tsv"

echo "| configuration | 200/s at saturation | × ceiling | refused (503) | CPU µs/req | CPU × ceiling | fixed rate req/s | p50 ms | p99 ms | p99.9 ms | errors | idle RSS MB | peak RSS MB | start-up ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
count_nats
measure "ceiling (bare hyper)" ceiling bench/body-1k.json $info / $ceiling 127.0.0.1:$port
measure "stdout → /dev/null" stdout bench/body-1k.json $info /readyz $(gateway --bus stdout)
measure "NATS core" nats bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats)
measure "NATS JetStream" jetstream bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH)
$admin jetstream-delete "$nats" HOOKBUS_BENCH
# The gateway, then the bare client, each against a fresh unbounded durable queue (counted).
measure "RabbitMQ (confirms)" amqp bench/body-1k.json $info /readyz $(gateway --bus amqp --amqp-url $amqp)
gateway_amqp_rps=$rps gateway_amqp_confirmed=$confirmed_rps gateway_amqp_ledger=$ledger
bare_amqp
# A bounded queue again, so that the broker does not keep what the counts needed.
$admin amqp-sink "$amqp" tencent "bench.$info"
measure "Kafka (tansu)" kafka bench/body-1k.json $info /readyz $(gateway --bus kafka --instance-id bench)
rm -rf /tmp/hookbus-bench-spool
measure "NATS core + spool" nats bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats --spool-dir /tmp/hookbus-bench-spool)
rm -rf /tmp/hookbus-bench-spool
measure "stdout + spool" stdout bench/body-1k.json $info /readyz $(gateway --bus stdout --spool-dir /tmp/hookbus-bench-spool)
rm -rf /tmp/hookbus-bench-spool
measure "NATS core, 16 KB body" nats bench/body-16k.json $info /readyz $(gateway --bus nats --nats-url $nats)
measure "NATS core, 64 KB body" nats bench/body-64k.json $info /readyz $(gateway --bus nats --nats-url $nats --max-body-bytes 70000)

for bus in nats amqp kafka; do
  $bin respond --bus $bus --prefix bench --instance-id bench-responder >/dev/null 2>"$log/respond-$bus.log" &
  responder=$!
  until grep -q "answering requests" "$log/respond-$bus.log"; do sleep 0.05; done
  measure "decisions over $bus (hookbus respond)" decide-$bus bench/body-gift.json $gift /readyz $(gateway --bus $bus --instance-id bench)
  if [[ $bus == nats ]]; then
    rate=10000 measure "decisions over nats at 10,000/s" decide-nats bench/body-gift.json $gift /readyz $(gateway --bus $bus --instance-id bench)
  fi
  stop $responder
done

# A broker that stops answering: a second NATS server, paused once the gateway is connected,
# its count by a subscriber of its own; resumed before the drain, so that what the outbox held
# can reach it and be counted (more than once, some: published again when unconfirmed).
nats-server -a 127.0.0.1 -p 4333 >/dev/null 2>&1 &
paused=$!
until (exec 3<>/dev/tcp/127.0.0.1/4333) 2>/dev/null; do sleep 0.05; done
uncount
count_nats nats://127.0.0.1:4333
(sleep 2 && kill -STOP $paused) &
retried=1 before_drain="kill -CONT $paused" \
  measure "growing outbox (NATS paused)" nats bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url nats://127.0.0.1:4333)
kill -CONT $paused; kill $paused; wait $paused 2>/dev/null || true
uncount
rm -f "$tsv.row"

echo
echo "Ledger (each callback answered 200 counted at a consumer or in the broker once the gateway drained):"
printf -- '- %s\n' "${ledgers[@]}"
echo
python3 - "$gateway_amqp_rps" "$gateway_amqp_confirmed" "$bare" "$gateway_amqp_ledger" <<'PY'
import json, sys
accepted, confirmed, bare = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
if sys.argv[4].startswith("void"):
    print("RabbitMQ under wrk's flood: VOID (the ledger above).")
    sys.exit()
rate = max(bare["rate"], 1)
print(f"RabbitMQ under wrk's flood: the gateway accepted {accepted:,}/s (200) = {accepted / rate:.2f} x and had "
      f"{confirmed:,}/s confirmed = {confirmed / rate:.2f} x the bare client's {int(bare['rate']):,} confirmed/s "
      f"(a 200 means the event is in the outbox; the outbox filled during the run).")
PY
bench/plot.sh "$tsv" target/bench/latency.png
