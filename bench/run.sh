#!/usr/bin/env bash
# Benchmarks hookbus side by side with a bare hyper server (the ceiling), on every bus, in one
# run, and prints a Markdown table. Saturation: wrk, 2 threads, 64 connections, counting 200s
# only. Latency: the fixed-rate generator (bench/load.rs) at half the saturation rate (or
# $rate), 32 connections, without coordinated omission.
# Usage: bench/run.sh [seconds per measurement, default 10]
source "$(dirname "$0")/setup.sh"
admin=target/release/examples/admin
nats=nats://127.0.0.1:4222
amqp=amqp://guest:guest@127.0.0.1:5672/%2f

rss() { awk -v key="$2:" '$1 == key { print int($2 / 1024) }' "/proc/$1/status"; }

wait_ready() { # path → milliseconds until it answers 200
  local started=$(date +%s%N)
  until curl -sf -o /dev/null "http://127.0.0.1:$port$1"; do
    (( $(date +%s%N) - started < 30000000000 )) || { echo "not ready after 30 s" >&2; return 1; }
    sleep 0.005
  done
  echo $(( ($(date +%s%N) - started) / 1000000 ))
}

ceiling_rps=
# name body command ready-path program args... : one row of the table
measure() {
  local name=$1 body=$2 command=$3 ready=$4
  shift 4
  "$@" >/dev/null 2>"$log/${name//[^a-zA-Z0-9]/_}.log" &
  local pid=$!
  local start_ms
  start_ms=$(wait_ready "$ready")
  sleep 0.5
  local idle
  idle=$(rss $pid VmRSS)
  local wrk_out
  wrk_out=$(BENCH_BODY=$body wrk -t2 -c64 -d"${seconds}s" -s bench/post.lua "$(url "$command")")
  # Saturation counts answers 200 only: a 503 from a full outbox is cheap and says nothing.
  local rps errors
  errors=$(awk '/Non-2xx/ { n += $5 } /Socket errors/ { n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$wrk_out")
  rps=$(awk -v errors="$errors" -v seconds="$seconds" '/requests in/ { printf "%d", ($1 - errors) / seconds }' <<<"$wrk_out")
  local fixed
  fixed=$($load --url "http://127.0.0.1:$port/" --rate "${rate:-$((rps / 2))}" --duration "${seconds}s" --body "$body" \
    --command "$command" --token "$token")
  local peak
  peak=$(rss $pid VmHWM)
  kill -TERM $pid
  wait $pid || true
  [[ -n $ceiling_rps ]] || ceiling_rps=$rps
  python3 - "$name" "$rps" "$ceiling_rps" "$errors" "$fixed" "$idle" "$peak" "$start_ms" <<'PY'
import json, sys
name, rps, ceiling, errors, fixed, idle, peak, start = sys.argv[1:]
f = json.loads(fixed)
print(f"| {name} | {int(rps):,} | {int(rps) / int(ceiling):.2f} | {errors} | {int(f['rate']):,} | "
      f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['errors']} | {idle} | {peak} | {start} |")
PY
}

gateway() { # extra flags... → a gateway command line on $port
  echo "$bin serve --listen 127.0.0.1:$port --sdk-app-id $app --token $token --prefix bench $*"
}

info=Live.CallbackAfterMemberStateChanged
gift=Live.CallbackBeforeSendGift
$admin amqp-sink "$amqp" tencent "bench.$info"
$admin jetstream-delete "$nats" HOOKBUS_BENCH

echo "| configuration | 200/s at saturation | × ceiling | refused (503) | fixed rate req/s | p50 ms | p99 ms | p99.9 ms | errors | idle RSS MB | peak RSS MB | start-up ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
measure "ceiling (bare hyper)" bench/body-1k.json $info / target/release/examples/ceiling 127.0.0.1:$port
measure "stdout → /dev/null" bench/body-1k.json $info /readyz $(gateway --bus stdout)
measure "NATS core" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats)
measure "NATS JetStream" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH)
$admin jetstream-delete "$nats" HOOKBUS_BENCH
measure "RabbitMQ (confirms)" bench/body-1k.json $info /readyz $(gateway --bus amqp --amqp-url $amqp)
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
  kill -TERM $responder
  wait $responder || true
done

# A broker that stops answering: a second NATS server, paused once the gateway is connected.
nats-server -a 127.0.0.1 -p 4333 >/dev/null 2>&1 &
paused=$!
until (exec 3<>/dev/tcp/127.0.0.1/4333) 2>/dev/null; do sleep 0.05; done
(sleep 2 && kill -STOP $paused) &
measure "growing outbox (NATS paused)" bench/body-1k.json $info /readyz $(gateway --bus nats --nats-url nats://127.0.0.1:4333)
kill -CONT $paused; kill $paused; wait $paused 2>/dev/null || true
