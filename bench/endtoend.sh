#!/usr/bin/env bash
# End-to-end latency per bus: from the first byte of a callback to its event's receipt by a
# consumer on this machine. The consumer runs inside the fixed-rate generator (bench/load.rs
# --consume), so both ends read one monotonic clock; the origin is the one its HTTP latency counts
# from (no coordinated omission). Signed 230-byte bodies (bench/body-230.json), 32 connections,
# at each rate, on NATS core, NATS JetStream and RabbitMQ (confirms), each without and with a
# spool (--spool-dir, fsynced before the answer). Kafka is not measured: the generator has no
# Kafka consumer.
# Prints a Markdown table (with the HTTP p50/p99 and the gateway's peak RSS beside), and appends
# one line per point to $TSV (default bench/latency.tsv, whose p50/p99 columns are then the
# end-to-end ones) for bench/plot.sh to draw beside the rows of bench/run.sh.
# Usage: [TSV=file] bench/endtoend.sh [seconds per point, 5] [rates, "1000 5000 10000"]
source "$(dirname "$0")/setup.sh" "${1:-5}"
rates=${2:-1000 5000 10000}
tsv=${TSV:-bench/latency.tsv}
info=Live.CallbackAfterMemberStateChanged
spool=/tmp/hookbus-bench-e2e-spool

peak_rss() { awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$1/status"; }

echo "| bus | spool | offered /s | answered /s | HTTP p50 ms | HTTP p99 ms | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | events missing | errors | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
for row in "NATS core" "NATS JetStream" "RabbitMQ (confirms)"; do
  case $row in
    "NATS core") flags="--bus nats --nats-url $nats" consume=$nats ;;
    "NATS JetStream") flags="--bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH"
      consume=$nats ;;
    *) flags="--bus amqp --amqp-url $amqp" consume=$amqp ;;
  esac
  for spooled in no yes; do
    for rate in $rates; do
      rm -rf "$spool"
      [[ $row != "NATS JetStream" ]] || $admin jetstream-delete "$nats" HOOKBUS_BENCH
      extra=$([[ $spooled == no ]] || echo "--spool-dir $spool")
      start endtoend $(gateway $flags $extra)
      wait_ready /readyz >/dev/null
      sleep 0.5
      out=$($load --url "http://127.0.0.1:$port/" --rate "$rate" --duration "${seconds}s" --body bench/body-230.json \
        --command $info --token $token --consume "$consume" --destination "bench.$info")
      rss=$(peak_rss $pid)
      stop $pid
      name="end to end, $row$([[ $spooled == no ]] || echo " + spool")"
      python3 - "$row" "$spooled" "$rate" "$rss" "$out" "$name" "$tsv" <<'PY'
import json, sys
row, spooled, rate, rss, out, name, tsv = sys.argv[1:]
f = json.loads(out)
print(f"| {row} | {spooled} | {int(rate):,} | {f['rate']:,.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
      f"{f['e2e_p50_ms']:.2f} | {f['e2e_p99_ms']:.2f} | {f['e2e_p999_ms']:.2f} | {f['e2e_missing']} | {f['errors']} | {rss} |")
with open(tsv, "a") as lines:
    print(name, rate, int(f["rate"]), f["e2e_p50_ms"], f["e2e_p99_ms"], f["errors"], sep="\t", file=lines)
PY
    done
  done
done
rm -rf "$spool"
$admin jetstream-delete "$nats" HOOKBUS_BENCH
