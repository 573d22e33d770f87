#!/usr/bin/env bash
# Decisions over NATS at a fixed rate, on their own (bench/run.sh measures them right after a
# saturation run): the gateway and `hookbus respond` on NATS core, the fixed-rate generator
# (bench/src/bin/load.rs, 32 connections) posting signed gift callbacks (bench/body-gift.json). For
# each configuration, round after round: p50 and p99 latency, and the CPU per decision of the
# gateway and of the responder (utime + stime from /proc/PID/stat over the run), and how often
# the gateway's threads were preempted (involuntary context switches, /proc/PID/task/*/status).
# A configuration is the gateway's and the responder's --threads: GATEWAY_THREADS="1 2" and
# RESPONDER_THREADS="1 2" compare them (defaults "1" and "2": as each runs without the flag here).
# Each round also runs the bare requester (`admin nats-requests`: the same rate of requests with
# the same body straight to the responder over NATS, no HTTP and no gateway), so that the
# gateway's figures stand beside what this machine's broker and responder do on their own; and
# once more with bare HTTP (the ceiling, bench/src/bin/ceiling.rs) loaded at the same rate at the same
# time: the two legs of a decision without the gateway, competing for the cores as they do in it.
# With RESPONDER_BASELINE=path/to/another/hookbus, that build's `respond` is measured too, in
# every configuration of every round: a change to the responder, side by side; with
# GATEWAY_BASELINE=path/to/another/hookbus, that build's gateway: a change to the gateway.
# Also counted: the gateway's write and writev calls per decision (/proc/PID/io syscw): its
# writes to the NATS connection (writev) and the runtime waking its own event loop (an eventfd
# write when a decision's deadline timer is due before every other timer). HTTP answers go out
# by send, which syscw does not count.
# With BUSES="nats amqp", the gateway and the responder also run over RabbitMQ in every round,
# beside NATS (the bare legs are NATS's: there is no bare AMQP requester).
# Targets (NATS, at 10,000 decisions/s): the gateway's p99 minus the bare legs' p99 ≤ 1 ms and
# its p50 minus theirs ≤ 0.3 ms, medians over the rounds of each round's difference. The bare
# legs' figure is the bare HTTP quantile plus the bare requester's, both measured while the two
# run at once: a decision is one of each, one after the other. (A sum of two p99s is more than
# the p99 of the sums, so this understates the overhead at p99 somewhat; the legs cannot be
# paired request by request.) Also AMQP's gateway CPU per decision against NATS's ≤ 1.3 ×.
# Every gateway measurement checks its ledger (bench/ledger.sh): each decision answered 200 is a
# reply counted in the gateway's /metrics (hookbus_decisions_total{outcome="reply"}), not a
# fallback; a void one says so (stderr and the rounds) and is left out of the medians. The bare
# requester's ledger is its own count of the replies it got; bare HTTP (the ceiling) publishes
# nothing and cannot be counted: the rounds say so.
# Usage: [BUSES="nats amqp"] [GATEWAY_THREADS="1 2"] [RESPONDER_THREADS="1 2"] [RESPONDER_BASELINE=binary]
#        [GATEWAY_BASELINE=binary] bench/decisions.sh [rounds, 3] [seconds, 5] [rate, 10000]
rounds=${1:-3}
rate=${3:-10000}
source "$(dirname "$0")/setup.sh" "${2:-5}"
source "$(dirname "$0")/ledger.sh"
gift=Live.CallbackBeforeSendGift
results=$log/decisions.tsv
: >"$results"

preemptions() { # pid → how often its threads were preempted so far (involuntary context switches)
  cat /proc/"$1"/task/*/status | awk '/^nonvoluntary_ctxt_switches/ { n += $2 } END { print n + 0 }'
}

writes() { # pid → its write and writev calls so far
  awk '/^syscw/ { print $2 }' /proc/"$1"/io
}

bus_flags() { # bus → the flags that connect to it
  [[ $1 == nats ]] && echo "--bus nats --nats-url $nats" || echo "--bus amqp --amqp-url $amqp"
}

ok_of() { python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ok"])' "$1"; } # JSON line → its 200s

start_responder() { # binary threads [bus] → $responder, once it answers requests
  "$1" respond $(bus_flags "${3:-nats}") --prefix bench --threads "$2" >/dev/null 2>"$log/respond.log" &
  responder=$!
  until grep -q "answering requests" "$log/respond.log"; do sleep 0.05; done
}

for round in $(seq 1 "$rounds"); do
  for responder_bin in $bin ${RESPONDER_BASELINE:-}; do
    responder_name=$([[ $responder_bin == "$bin" ]] || echo " ($responder_bin)")
    for bus in ${BUSES:-nats}; do for gateway_bin in $bin ${GATEWAY_BASELINE:-}; do
      gateway_name=$([[ $gateway_bin == "$bin" ]] || echo " ($gateway_bin)")
      [[ $bus == nats ]] || gateway_name+=" over $bus"
      for gateway_threads in ${GATEWAY_THREADS:-1}; do for responder_threads in ${RESPONDER_THREADS:-2}; do
        start_responder "$responder_bin" "$responder_threads" $bus
        start decisions $(bin=$gateway_bin gateway $(bus_flags $bus) --threads "$gateway_threads")
        wait_ready /readyz >/dev/null
        sleep 0.5
        gateway_before=$(cpu_ticks $pid) responder_before=$(cpu_ticks $responder) preempted_before=$(preemptions $pid)
        writes_before=$(writes $pid) replies_before=$(counted decide-$bus gateway)
        fixed=$($load --url "$(url $gift)" --rate "$rate" --duration "${seconds}s" --body bench/body-gift.json \
          --command $gift --token $token)
        gateway_after=$(cpu_ticks $pid) responder_after=$(cpu_ticks $responder) preempted_after=$(preemptions $pid)
        writes_after=$(writes $pid)
        settle decide-$bus gateway "$(ok_of "$fixed")" "$replies_before"
        stop $pid
        stop $responder
        label="gateway $gateway_threads$gateway_name, responder $responder_threads$responder_name"
        [[ $ledger != void* ]] || echo "round $round, $label: VOID: ${ledger#void: }" >&2
        [[ $ledger != ok ]] || ledger="ok, $count replies counted"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$label" \
          "$fixed" $((gateway_after - gateway_before)) $((responder_after - responder_before)) \
          $((preempted_after - preempted_before)) $((writes_after - writes_before)) "$ledger" >>"$results"
      done; done
    done; done
    for responder_threads in ${RESPONDER_THREADS:-2}; do
      for beside in "" ceiling; do
        start_responder "$responder_bin" "$responder_threads"
        sleep 0.5
        if [[ -n $beside ]]; then
          # The other leg of a decision at the same time: bare HTTP at the same rate.
          start ceiling "$ceiling" "127.0.0.1:$port"
          wait_ready / >/dev/null
          $load --url "http://127.0.0.1:$port/" --rate "$rate" --duration "${seconds}s" --body bench/body-gift.json \
            --command $gift >"$log/ceiling-beside.json" &
          http=$!
        fi
        responder_before=$(cpu_ticks $responder)
        fixed=$($admin nats-requests $nats bench.decide.$gift "$rate" "$seconds" bench/body-gift.json)
        responder_after=$(cpu_ticks $responder)
        stop $responder
        label="bare requester, responder $responder_threads$responder_name"
        if [[ -n $beside ]]; then
          wait $http
          stop $pid
          label+=", beside bare HTTP"
          printf '%s\t%s\t%s\t\t\t\t\t%s\n' "$round" "bare HTTP (ceiling), beside the bare requester$responder_name" \
            "$(<"$log/ceiling-beside.json")" "$(uncounted ceiling)" >>"$results"
        fi
        printf '%s\t%s\t%s\t\t%s\t\t\t%s\n' "$round" "$label" "$fixed" $((responder_after - responder_before)) \
          "ok, the requester's own count of its replies" >>"$results"
      done
    done
  done
done

python3 - "$results" "$clk_tck" "$rate" "$seconds" <<'PY'
import json, statistics, sys
results, hz, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rows, rounds, void = [], [], []
for line in open(results):
    round_, threads, fixed, gateway, responder, preempted, writes, ledger = line.rstrip("\n").split("\t")
    if ledger.startswith("void"):  # left out of every figure
        void.append(f"round {round_}, {threads}: VOID: {ledger[6:]}")
        continue
    f = json.loads(fixed)
    rounds.append(round_)
    per = lambda ticks: int(ticks) * 1e6 / hz / max(f["ok"], 1) if ticks else float("nan")
    rows.append((threads, f, per(gateway), per(responder), int(preempted) / float(seconds) if preempted else float("nan"),
                 int(writes) / max(f["ok"], 1) if writes else float("nan"), ledger))
cpu = lambda value: "—" if value != value else f"{value:.1f}"  # NaN: no gateway in the row
count = lambda value: "—" if value != value else f"{value:,.0f}"
ratio = lambda value: "—" if value != value else f"{value:.2f}"
print(f"Medians over the rounds, {rate:,} decisions/s for {seconds} s each:")
print()
print("| threads | p50 ms | p99 ms | errors | gateway CPU µs/decision | responder CPU µs/decision | gateway preempted /s "
      "| gateway writes/decision |")
print("|---|---|---|---|---|---|---|---|")
med = statistics.median
for threads in dict.fromkeys(r[0] for r in rows):
    mine = [r for r in rows if r[0] == threads]
    print(f"| {threads} | {med([r[1]['p50_ms'] for r in mine]):.2f} | {med([r[1]['p99_ms'] for r in mine]):.2f} | "
          f"{sum(r[1]['errors'] for r in mine)} | {cpu(med([r[2] for r in mine]))} | {cpu(med([r[3] for r in mine]))} | "
          f"{count(med([r[4] for r in mine]))} | {ratio(med([r[5] for r in mine]))} |")
print()
# Each round's gateway against the two bare legs of that round, run at once.
by_round = {}
for round_, row in zip(rounds, rows):
    by_round.setdefault(round_, {})[row[0]] = row
def legs(mine, quantile):
    http = [v for k, v in mine.items() if k.startswith("bare HTTP (ceiling), beside")]
    bus = [v for k, v in mine.items() if k.startswith("bare requester") and k.endswith("beside bare HTTP")]
    return http[0][1][quantile] + bus[0][1][quantile] if http and bus else None
print("Overhead over the bare legs run at once (each round: gateway − (bare HTTP + bare requester)), medians:")
print()
print("| configuration | bare legs p50 ms | p50 overhead ms | bare legs p99 ms | p99 overhead ms | rounds p99 overhead |")
print("|---|---|---|---|---|---|")
overheads = {}
for threads in dict.fromkeys(r[0] for r in rows):
    if not threads.startswith("gateway") or " over " in threads:
        continue
    p50s, p99s, bare50, bare99 = [], [], [], []
    for mine in by_round.values():
        if threads in mine and legs(mine, "p99_ms") is not None:
            bare50.append(legs(mine, "p50_ms")); bare99.append(legs(mine, "p99_ms"))
            p50s.append(mine[threads][1]["p50_ms"] - bare50[-1]); p99s.append(mine[threads][1]["p99_ms"] - bare99[-1])
    if p99s:
        overheads[threads] = (med(p50s), med(p99s))
        print(f"| {threads} | {med(bare50):.2f} | {med(p50s):.2f} | {med(bare99):.2f} | {med(p99s):.2f} | "
              f"{', '.join(f'{v:.2f}' for v in p99s)} |")
if overheads:
    threads, (p50, p99) = next(iter(overheads.items()))
    print()
    print(f"Target, {threads}: p99 overhead {p99:.2f} ms (≤ 1: {'holds' if p99 <= 1 else 'misses'}), "
          f"p50 overhead {p50:.2f} ms (≤ 0.3: {'holds' if p50 <= 0.3 else 'misses'}).")
gateways = [r[0] for r in rows if r[0].startswith("gateway")]
amqp = next((t for t in dict.fromkeys(gateways) if " over amqp" in t), None)
if amqp and gateways:
    nats_cpu = med([r[2] for r in rows if r[0] == gateways[0]])
    amqp_cpu = med([r[2] for r in rows if r[0] == amqp])
    print(f"AMQP decisions: {amqp_cpu:.1f} against {nats_cpu:.1f} µs of gateway CPU over NATS, "
          f"{amqp_cpu / nats_cpu:.2f} × (≤ 1.3: {'holds' if amqp_cpu <= 1.3 * nats_cpu else 'misses'}).")
print()
print("Rounds (threads: p50 / p99 ms, gateway / responder µs per decision, gateway preempted /s, writes/decision; "
      "ledger):")
for threads, f, gateway, responder, preempted, writes, ledger in rows:
    print(f"- {threads}: {f['p50_ms']:.2f} / {f['p99_ms']:.2f}, {cpu(gateway)} / {cpu(responder)}, {count(preempted)}, "
          f"{ratio(writes)}; {f['ok']:,} answered, {ledger}")
for line in void:
    print(f"- {line}")
PY
