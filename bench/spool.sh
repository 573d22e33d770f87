#!/usr/bin/env bash
# The spool at the disk's speed: hookbus with `--spool-dir` against the memory outbox on the
# same bus, the legs without and with a spool of their own (bench/src/bin/legs.rs `--spool`: the
# smallest program appending each callback and syncing it before the answer, group commit), and
# the disk's own fdatasync, side by side in one run, alternating rounds (the order of the
# configurations flips every round). Each round, per bus:
# - saturation: wrk -t1 -c64 for $seconds posting $BODY, counting 200s only; CPU per callback is
#   the gateway's utime + stime over the run (/proc/PID/stat) divided by every answer wrk counted;
# - latency: the fixed-rate generator (bench/src/bin/load.rs, no coordinated omission) at half the
#   spool's saturation rate of that round, against each, on the 64 connections of the saturation:
#   a spool's answer waits for a sync, so its rate is the connections over that wait, and half
#   of it on half the connections would load each connection fully, not half;
# - peak RSS (VmHWM) of each program over both;
# - the disk: $FSYNC_SECONDS of 4 KiB appends each followed by fdatasync, on a file in the spool's
#   directory (the spool's group commit is one append and one fdatasync), latency per fdatasync.
# The spool lives in $SPOOL_PARENT (default /var/tmp: the disk, not a tmpfs), wiped before each
# gateway starts. Every measurement checks its ledger (bench/ledger.sh: each callback answered 200
# counted by the bus after the program drained); a void one says so and is left out of the
# medians. Prints each round and the medians, and checks the targets:
# rate with spool ≥ 0.8 × without; p99 with spool at half its rate ≤ memory p99 at that rate +
# 3 × fdatasync p99; CPU per callback ≤ 1.3 ×; peak RSS ≤ 64 MB.
# Usage: [BUSES="nats amqp kafka"] [BODY=bench/body-1k.json] [SPOOL_PARENT=/var/tmp]
#        [FSYNC_SECONDS=3] [BASELINE=binary] [GATEWAY=binary] [PORT=18180] bench/spool.sh [rounds, 5] [seconds per measurement, 5]
# With BASELINE, that build's spool is a fifth configuration of every round (a change measured
# against the gateway before it); GATEWAY measures another build than target/release's.

rounds=${1:-5}
# A port and logs of its own: another benchmark may hold setup.sh's.
BENCH_PORT=${PORT:-${BENCH_PORT:-18180}} BENCH_LOG=${BENCH_LOG:-/tmp/hookbus-spool-bench-logs}
source "$(dirname "$0")/setup.sh" "${2:-5}"
source "$(dirname "$0")/ledger.sh"
bin=${GATEWAY:-$bin}
info=Live.CallbackAfterMemberStateChanged
body=${BODY:-bench/body-1k.json}
spool=${SPOOL_PARENT:-/var/tmp}/hookbus-bench-spool
results=$log/spool.tsv
: >"$results"

bus_flags() { # bus → its gateway flags
  case $1 in
    nats) echo "--bus nats --nats-url $nats" ;;
    amqp) echo "--bus amqp --amqp-url $amqp" ;;
    kafka) echo "--bus kafka --instance-id bench" ;;
  esac
}
configurations=(memory spool legs legs-spool)
[[ -z ${BASELINE:-} ]] || configurations+=(baseline)
command_line() { # bus configuration → its command line
  case $2 in
    memory) gateway $(bus_flags $1) ;;
    spool) gateway $(bus_flags $1) --spool-dir $spool ;;
    baseline) bin=$BASELINE gateway $(bus_flags $1) --spool-dir $spool ;;
    legs) echo "$legs $1 127.0.0.1:$port --prefix bench" ;;
    legs-spool) mkdir -p $spool && echo "$legs $1 127.0.0.1:$port --prefix bench --spool $spool/legs" ;;
  esac
}
program() { [[ $1 == legs* ]] && echo legs || echo gateway; } # configuration → its kind
fresh() { # bus configuration → a started gateway ($pid), ready, on an empty spool
  rm -rf "$spool"
  prepare "$1" >/dev/null
  start "spool-$1-$2" $(command_line "$1" "$2")
  wait_ready /readyz >/dev/null
  [[ $1 != kafka ]] || curl -sf -o /dev/null --data-binary @"$body" "$(url $info)"
  sleep 0.5
}
peak_rss() { awk '$1 == "VmHWM:" { print int($2 / 1024) }' "/proc/$1/status"; }

# $FSYNC_SECONDS of 4 KiB appends and fdatasyncs in the spool's directory → "p50_ms p99_ms syncs/s"
disk() {
  mkdir -p "$spool"
  python3 - "$spool/fdatasync-probe" "${FSYNC_SECONDS:-3}" <<'PY'
import os, sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_TRUNC, 0o644)
page, times = b"x" * 4096, []
end = time.monotonic() + seconds
while time.monotonic() < end:
    os.write(fd, page)
    start = time.perf_counter()
    os.fdatasync(fd)
    times.append(time.perf_counter() - start)
os.close(fd)
os.unlink(path)
times.sort()
at = lambda q: times[min(len(times) - 1, int(q * len(times)))] * 1000
print(f"{at(0.5):.3f} {at(0.99):.3f} {len(times) / seconds:.0f}")
PY
}

counter=
[[ " ${BUSES:-nats} " != *" nats "* ]] || count_nats
for round in $(seq 1 "$rounds"); do
  for bus in ${BUSES:-nats}; do
    order=("${configurations[@]}")
    (( round % 2 )) || order=($(printf '%s\n' "${configurations[@]}" | tac))
    declare -A rate=() cpu=() peak=() void=()
    for configuration in "${order[@]}"; do
      fresh $bus $configuration
      before=$(counted $bus x)
      saturate $pid "$body" "$(url $info)"
      rate[$configuration]=$rps cpu[$configuration]=$cpu_us peak[$configuration]=$(peak_rss $pid)
      settle $bus "$(program $configuration)" $((responses - errors)) "$before"
      [[ $ledger == ok ]] || void[$configuration]="saturation: $ledger"
      stop $pid
    done
    half=$(( rate[spool] / 2 ))
    for configuration in "${order[@]}"; do
      fresh $bus $configuration
      before=$(counted $bus x)
      out=$($load --url "http://127.0.0.1:$port/" --rate $(( half > 0 ? half : 1 )) --duration "${seconds}s" \
        --connections 64 --body "$body" --command $info --token $token)
      read -r ok p50 p99 errors < <(python3 -c 'import json, sys; f = json.loads(sys.argv[1]); print(f["ok"], f["p50_ms"], f["p99_ms"], f["errors"])' "$out")
      peak[$configuration]=$(( $(peak_rss $pid) > peak[$configuration] ? $(peak_rss $pid) : peak[$configuration] ))
      settle $bus "$(program $configuration)" "$ok" "$before"
      [[ $ledger == ok ]] || void[$configuration]+="${void[$configuration]:+; }latency: $ledger"
      stop $pid
      [[ -z ${void[$configuration]:-} ]] || echo "round $round, $bus, $configuration: VOID: ${void[$configuration]}" >&2
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$bus" "$configuration" "${rate[$configuration]}" \
        "${cpu[$configuration]}" "$half" "$p50" "$p99" "$errors" "${peak[$configuration]}" "${void[$configuration]:-ok}" >>"$results"
    done
    read -r sync50 sync99 syncs < <(disk)
    printf '%s\t%s\tfdatasync\t%s\t%s\t%s\n' "$round" "$bus" "$sync50" "$sync99" "$syncs" >>"$results"
  done
done
rm -rf "$spool"
uncount

python3 - "$results" "$seconds" "$body" "${configurations[@]}" <<'PY'
import statistics, sys
results, seconds, body, configurations = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
rows = [line.rstrip("\n").split("\t") for line in open(results)]
void = [r for r in rows if r[2] != "fdatasync" and r[10] != "ok"]
rows = [r for r in rows if r[2] == "fdatasync" or r[10] == "ok"]
med = statistics.median
print(f"Medians over the rounds; saturation wrk -t1 -c64 -d{seconds}s, latency at half the spool's rate "
      f"for {seconds} s, 64 connections; {body}.")
print()
print("| bus | configuration | 200/s at saturation | × memory | CPU µs/callback | × memory | fixed rate /s | p50 ms | p99 ms | errors | peak RSS MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for bus in dict.fromkeys(r[1] for r in rows):
    of = lambda c, i: [float(r[i]) for r in rows if r[1] == bus and r[2] == c]
    measured = [c for c in configurations if of(c, 3)]
    base = lambda c: "legs" if c.startswith("legs") else "memory"
    m = {c: dict(rate=med(of(c, 3)), cpu=med(of(c, 4)), half=med(of(c, 5)), p50=med(of(c, 6)), p99=med(of(c, 7)),
                 errors=sum(of(c, 8)), peak=max(of(c, 9))) for c in measured}
    if {"memory", "spool", "legs", "legs-spool"} - set(measured):
        print(f"| {bus} | every round of {', '.join(sorted({'memory', 'spool', 'legs', 'legs-spool'} - set(measured)))} void |")
        continue
    for c in measured:
        f = m[c]
        print(f"| {bus} | {c} | {f['rate']:,.0f} | {f['rate'] / m[base(c)]['rate']:.2f} | {f['cpu']:.1f} | "
              f"{f['cpu'] / m[base(c)]['cpu']:.2f} | {f['half']:,.0f} | {f['p50']:.2f} | {f['p99']:.2f} | "
              f"{f['errors']:.0f} | {f['peak']:.0f} |")
    sync50, sync99 = med(of("fdatasync", 3)), med(of("fdatasync", 4))
    print(f"| {bus} | the disk: 4 KiB append + fdatasync | {med(of('fdatasync', 5)):,.0f} syncs/s | — | — | — | — | "
          f"{sync50:.2f} | {sync99:.2f} | — | — |")
    s, mem = m["spool"], m["memory"]
    bound = mem["p99"] + 3 * sync99
    verdict = lambda ok: "met" if ok else "not met"
    print()
    print(f"Targets, {bus}: rate {s['rate'] / mem['rate']:.2f} × (≥ 0.8: {verdict(s['rate'] >= 0.8 * mem['rate'])}); "
          f"p99 {s['p99']:.2f} ms ≤ {mem['p99']:.2f} + 3 × {sync99:.2f} = {bound:.2f} ms: {verdict(s['p99'] <= bound)}; "
          f"CPU {s['cpu'] / mem['cpu']:.2f} × (≤ 1.3: {verdict(s['cpu'] <= 1.3 * mem['cpu'])}); "
          f"peak RSS {s['peak']:.0f} MB (≤ 64: {verdict(s['peak'] <= 64)}).")
    legs, legs_spool = m["legs"], m["legs-spool"]
    print(f"The legs, {bus} (the same parts, the same guarantee, nothing else): with their spool "
          f"rate {legs_spool['rate'] / legs['rate']:.2f} ×, p99 {legs_spool['p99']:.2f} ms against {legs['p99']:.2f} ms, "
          f"CPU {legs_spool['cpu'] / legs['cpu']:.2f} ×, peak RSS {legs_spool['peak']:.0f} MB against {legs['peak']:.0f} MB.")
    print()
print("Rounds:")
for r in void:
    print(f"- round {r[0]}, {r[1]}, {r[2]}: VOID, left out of the medians: {r[10]}")
for r in rows:
    if r[2] == "fdatasync":
        print(f"- round {r[0]}, {r[1]}, the disk: fdatasync p50 {r[3]} ms, p99 {r[4]} ms ({r[5]} syncs/s)")
    else:
        print(f"- round {r[0]}, {r[1]}, {r[2]}: {int(r[3]):,} 200/s, {r[4]} µs/callback; at {int(r[5]):,}/s "
              f"p50 {float(r[6]):.2f} ms, p99 {float(r[7]):.2f} ms, {r[8]} errors; peak RSS {r[9]} MB")
PY
