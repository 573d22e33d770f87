#!/usr/bin/env bash
# End-to-end latency per bus: from the first byte of a callback to its event's receipt by a
# consumer on this machine. The consumer runs inside the fixed-rate generator (bench/src/bin/load.rs
# --consume), so both ends read one monotonic clock; the origin is the one its HTTP latency counts
# from (no coordinated omission). Signed 230-byte bodies (bench/body-230.json), 32 connections,
# at each rate, on NATS core, NATS JetStream, RabbitMQ (confirms) and Kafka (tansu), each without
# and with a spool (--spool-dir, fsynced before the answer), and with each publish linger of
# $LINGERS (--publish-linger; default "5ms", the gateway's default; "5ms 0s" compares).
# Prints a Markdown table (with the HTTP p50/p99, the gateway's CPU per callback over the load,
# user + system from /proc, and its peak RSS beside: what a linger saves and costs), and appends
# one line per point at the default linger to $TSV (default target/bench/latency.tsv, whose p50/p99
# columns are then the end-to-end ones) for bench/plot.sh to draw beside the rows of bench/run.sh.
# Its ledger is already counted at a consumer, callback by callback: the generator's consumer
# takes each event it receives off the list of callbacks answered 200 (by the Seq of its body),
# and what is left after 10 s is the `events missing` column; bench/ledger.sh adds nothing here.
# Usage: [TSV=file] [LINGERS="5ms 0s"] [BUSES="nats jetstream amqp kafka"]
#        bench/endtoend.sh [seconds per point, 5] [rates, "1000 5000 10000"]
source "$(dirname "$0")/setup.sh" "${1:-5}"
rates=${2:-1000 5000 10000}
tsv=${TSV:-target/bench/latency.tsv}
mkdir -p "$(dirname "$tsv")"
info=Live.CallbackAfterMemberStateChanged
spool=/tmp/hookbus-bench-e2e-spool

peak_rss() { awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$1/status"; }

echo "| bus | spool | linger | offered /s | answered /s | HTTP p50 ms | HTTP p99 ms | e2e p50 ms | e2e p99 ms | e2e p99.9 ms | events missing | errors | gateway CPU µs/callback | peak RSS MB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for bus in ${BUSES:-nats jetstream amqp kafka}; do
  case $bus in
    nats) row="NATS core" flags="--bus nats --nats-url $nats" consume=$nats ;;
    jetstream) row="NATS JetStream" consume=$nats
      flags="--bus nats --nats-url $nats --nats-jetstream --nats-create-stream HOOKBUS_BENCH" ;;
    amqp) row="RabbitMQ (confirms)" flags="--bus amqp --amqp-url $amqp" consume=$amqp ;;
    kafka) row="Kafka (tansu)" flags="--bus kafka --instance-id bench" consume=kafka://127.0.0.1:9092 ;;
  esac
  for spooled in no yes; do for linger in ${LINGERS:-5ms}; do
    for rate in $rates; do
      rm -rf "$spool"
      [[ $row != "NATS JetStream" ]] || $admin jetstream-delete "$nats" HOOKBUS_BENCH
      extra="--publish-linger $linger $([[ $spooled == no ]] || echo "--spool-dir $spool")"
      start endtoend $(gateway $flags $extra)
      wait_ready /readyz >/dev/null
      # The consumer reads a Kafka topic from its end: one callback first makes the topic.
      [[ $bus != kafka ]] || curl -sf -o /dev/null --data-binary @bench/body-230.json "$(url $info)"
      sleep 0.5
      before=$(cpu_ticks $pid)
      out=$($load --url "http://127.0.0.1:$port/" --rate "$rate" --duration "${seconds}s" --body bench/body-230.json \
        --command $info --token $token --consume "$consume" --destination "bench.$info")
      cpu=$(( $(cpu_ticks $pid) - before ))
      rss=$(peak_rss $pid)
      stop $pid
      name="end to end, $row$([[ $spooled == no ]] || echo " + spool")$([[ $linger == 5ms ]] || echo ", linger $linger")"
      python3 - "$row" "$spooled" "$linger" "$rate" "$cpu" "$clk_tck" "$rss" "$out" "$name" "$tsv" <<'PY'
import json, sys
row, spooled, linger, rate, cpu, clk_tck, rss, out, name, tsv = sys.argv[1:]
f = json.loads(out)
# Ticks over the load and the wait for its last events, per answered callback.
cpu_us = int(cpu) / int(clk_tck) * 1e6 / max(f["ok"], 1)
print(f"| {row} | {spooled} | {linger} | {int(rate):,} | {f['rate']:,.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | "
      f"{f['e2e_p50_ms']:.2f} | {f['e2e_p99_ms']:.2f} | {f['e2e_p999_ms']:.2f} | {f['e2e_missing']} | {f['errors']} | {cpu_us:.1f} | {rss} |")
if linger == "5ms":  # The other lingers are in the table only: the plot has a line per name.
  with open(tsv, "a") as lines:
    print(name, rate, int(f["rate"]), f["e2e_p50_ms"], f["e2e_p99_ms"], f["errors"], sep="\t", file=lines)
PY
    done
  done; done
done
rm -rf "$spool"
$admin jetstream-delete "$nats" HOOKBUS_BENCH
