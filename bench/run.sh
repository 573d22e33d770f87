#!/usr/bin/env bash
# Benchmarks hookbus side by side with a bare hyper server (the ceiling), on every bus, in one
# run, and prints a Markdown table. Saturation: wrk, 1 thread, 64 connections, counting 200s
# only; CPU per request is the server's utime + stime over that run (/proc/PID/stat) divided by
# every answer wrk counted. Latency: the fixed-rate generator (bench/src/bin/load.rs) at half the
# saturation rate (or $rate), 32 connections, without coordinated omission. For the rows that
# sweep, latency also at 10, 25, 75 and 90 % of the saturation rate (3 s each, less when the
# measurements are shorter), into target/bench/latency.tsv, drawn into target/bench/latency.png by bench/plot.sh.
# Usage: bench/run.sh [seconds per measurement, default 10]
source "$(dirname "$0")/setup.sh"
tsv=target/bench/latency.tsv
mkdir -p target/bench
sweep_seconds=$(( seconds < 3 ? seconds : 3 ))

rss() { awk -v key="$2:" '$1 == key { print int($2 / 1024) }' "/proc/$1/status"; }

# Events the gateway on $port has had confirmed by its bus so far (0 from the ceiling).
confirmed() { curl -s "http://127.0.0.1:$port/metrics" | awk '/^hookbus_publishes_confirmed_total/ { n = $2 } END { print n + 0 }'; }

# The rows whose latency is also measured, and drawn, against the offered rate.
swept_rows=("ceiling (bare hyper)" "NATS core" "NATS JetStream" "RabbitMQ (confirms)" "Kafka (tansu)"
  "decisions over nats (hookbus respond)")
swept() { # name → whether its row sweeps
  local row
  for row in "${swept_rows[@]}"; do [[ $row != "$1" ]] || return 0; done
  return 1
}

# name rate seconds body command → the fixed-rate generator's JSON line; in a row that sweeps,
# also a line of $tsv
fixed_rate() {
  local offered=$(( $2 > 0 ? $2 : 1 )) out
  out=$($load --url "http://127.0.0.1:$port/" --rate $offered --duration "$3s" --body "$4" --command "$5" \
    --token "$token")
  if swept "$1"; then
    python3 -c 'import json, sys
f = json.loads(sys.argv[3])
print(sys.argv[1], sys.argv[2], int(f["rate"]), f["p50_ms"], f["p99_ms"], f["errors"], sep="\t")' \
      "$1" $offered "$out" >>"$tsv"
  fi
  echo "$out"
}

ceiling_rps= ceiling_cpu=
# name body command ready-path program args... : one row of the table
measure() {
  local name=$1 body=$2 command=$3 ready=$4 pid
  shift 4
  start "$name" "$@"
  local start_ms
  start_ms=$(wait_ready "$ready")
  sleep 0.5
  local idle
  idle=$(rss $pid VmRSS)
  # Saturation counts answers 200 only: a 503 from a full outbox is cheap and says nothing.
  local confirmed_before
  confirmed_before=$(confirmed)
  saturate $pid "$body" "$(url "$command")"
  confirmed_rps=$(( ($(confirmed) - confirmed_before) / seconds ))
  local fixed
  fixed=$(fixed_rate "$name" "${rate:-$((rps / 2))}" "$seconds" "$body" "$command")
  local peak
  peak=$(rss $pid VmHWM)
  if swept "$name"; then
    for percent in 10 25 75 90; do
      fixed_rate "$name" $((rps * percent / 100)) "$sweep_seconds" "$body" "$command" >/dev/null
    done
  fi
  stop $pid
  [[ -n $ceiling_rps ]] || { ceiling_rps=$rps; ceiling_cpu=$cpu_us; }
  python3 - "$name" "$rps" "$ceiling_rps" "$errors" "$cpu_us" "$ceiling_cpu" "$fixed" "$idle" "$peak" "$start_ms" <<'PY'
import json, sys
name, rps, ceiling, errors, cpu, ceiling_cpu, fixed, idle, peak, start = sys.argv[1:]
f = json.loads(fixed)
cpu_ratio = f"{float(cpu) / float(ceiling_cpu):.2f}" if float(ceiling_cpu) > 0 else "—"
print(f"| {name} | {int(rps):,} | {int(rps) / max(int(ceiling), 1):.2f} | {errors} | {float(cpu):.1f} | "
      f"{cpu_ratio} | {int(f['rate']):,} | "
      f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['errors']} | {idle} | {peak} | {start} |")
PY
}

# The bare RabbitMQ client (bench/src/bin/admin.rs amqp-flood), with the gateway's publishing settings:
# its confirmed/s in the saturation column and its CPU per confirmed message; nacked and returned
# messages under errors.
bare_amqp() {
  bare=$($admin amqp-flood "$amqp" tencent "bench.$info" "$seconds" bench/body-1k.json)
  python3 - "$bare" "$ceiling_rps" "$ceiling_cpu" "$clk_tck" <<'PY'
import json, sys
bare, ceiling, ceiling_cpu, hz = sys.argv[1:]
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
$admin jetstream-delete "$nats" HOOKBUS_BENCH
{
  echo "# $(date -u +%Y-%m-%d), $(nproc) vCPU $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)," \
    "$(awk '/^MemTotal/ { printf "%d GiB", $2 / 1048576 }' /proc/meminfo), bench/run.sh $seconds"
  printf '# configuration\toffered rate\tachieved rate\tp50 ms\tp99 ms\terrors\n'
} >"$tsv"

echo "| configuration | 200/s at saturation | × ceiling | refused (503) | CPU µs/req | CPU × ceiling | fixed rate req/s | p50 ms | p99 ms | p99.9 ms | errors | idle RSS MB | peak RSS MB | start-up ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
measure "ceiling (bare hyper)" bench/body-1k.json $info / $ceiling 127.0.0.1:$port
measure "stdout → /dev/null" bench/body-1k.json $info /readyz $(gateway --bus stdout)
measure "NATS core" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats)
measure "NATS JetStream" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH)
$admin jetstream-delete "$nats" HOOKBUS_BENCH
# The gateway, then the bare client, each against a fresh bounded durable queue.
$admin amqp-sink "$amqp" tencent "bench.$info"
measure "RabbitMQ (confirms)" bench/body-1k.json $info /readyz $(gateway --bus amqp --amqp-url $amqp)
gateway_amqp_rps=$rps gateway_amqp_confirmed=$confirmed_rps
$admin amqp-sink "$amqp" tencent "bench.$info"
bare_amqp
measure "Kafka (tansu)" bench/body-1k.json $info /readyz $(gateway --bus kafka --instance-id bench)
rm -rf /tmp/hookbus-bench-spool
measure "NATS core + spool" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats --spool-dir /tmp/hookbus-bench-spool)
rm -rf /tmp/hookbus-bench-spool
measure "stdout + spool" bench/body-1k.json $info /readyz $(gateway --bus stdout --spool-dir /tmp/hookbus-bench-spool)
rm -rf /tmp/hookbus-bench-spool
measure "NATS core, 16 KB body" bench/body-16k.json $info /readyz $(gateway --bus nats --nats-url $nats)
measure "NATS core, 64 KB body" bench/body-64k.json $info /readyz $(gateway --bus nats --nats-url $nats --max-body-bytes 70000)

for bus in nats amqp kafka; do
  $bin respond --bus $bus --prefix bench --instance-id bench-responder >/dev/null 2>"$log/respond-$bus.log" &
  responder=$!
  until grep -q "answering requests" "$log/respond-$bus.log"; do sleep 0.05; done
  measure "decisions over $bus (hookbus respond)" bench/body-gift.json $gift /readyz $(gateway --bus $bus --instance-id bench)
  if [[ $bus == nats ]]; then
    rate=10000 measure "decisions over nats at 10,000/s" bench/body-gift.json $gift /readyz $(gateway --bus $bus --instance-id bench)
  fi
  stop $responder
done

# A broker that stops answering: a second NATS server, paused once the gateway is connected.
nats-server -a 127.0.0.1 -p 4333 >/dev/null 2>&1 &
paused=$!
until (exec 3<>/dev/tcp/127.0.0.1/4333) 2>/dev/null; do sleep 0.05; done
(sleep 2 && kill -STOP $paused) &
measure "growing outbox (NATS paused)" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url nats://127.0.0.1:4333)
kill -CONT $paused; kill $paused; wait $paused 2>/dev/null || true

echo
python3 - "$gateway_amqp_rps" "$gateway_amqp_confirmed" "$bare" <<'PY'
import json, sys
accepted, confirmed, bare = int(sys.argv[1]), int(sys.argv[2]), json.loads(sys.argv[3])
rate = max(bare["rate"], 1)
print(f"RabbitMQ under wrk's flood: the gateway accepted {accepted:,}/s (200) = {accepted / rate:.2f} x and had "
      f"{confirmed:,}/s confirmed = {confirmed / rate:.2f} x the bare client's {int(bare['rate']):,} confirmed/s "
      f"(a 200 means the event is in the outbox; the outbox filled during the run).")
PY
bench/plot.sh "$tsv" target/bench/latency.png
