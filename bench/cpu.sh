#!/usr/bin/env bash
# CPU per request against the ceiling on the informational path: the ceiling (bare hyper),
# hookbus on stdout (to /dev/null) and hookbus on NATS core, both signed, one after the other
# round after round, so that the drift of a shared machine falls on all three alike. Each is
# saturated by wrk -t1 -c64 posting bench/body-230.json (a ~230-byte callback, a Seq field added
# per request); CPU is the server's utime + stime over the run (/proc/PID/stat) divided by every
# answer wrk counted. Prints the medians over the rounds and their ratios to the ceiling, the
# target check, and each round's raw figures.
# Every NATS measurement checks its ledger (bench/ledger.sh): each callback answered 200 counted
# by a subscriber on bench.> once the gateway's outbox drained; a void one says so (stderr and
# the rounds) and is left out of the medians. The ceiling (publishes nothing) and stdout (to
# /dev/null) cannot be counted: the output says so.
# Target: on NATS core, CPU per request ≤ 1.3 × the ceiling's, the median of at least 7 rounds
# (the rate's ratio is printed too; it is no longer a target: it moves with the neighbours).
# With BASELINE=path/to/another/hookbus, that binary on NATS core is a fourth configuration of
# every round: a change measured against the gateway before it, side by side.
# Usage: [BASELINE=binary] bench/cpu.sh [rounds, default 7] [seconds per measurement, default 5]
rounds=${1:-7}
source "$(dirname "$0")/setup.sh" "${2:-5}"
source "$(dirname "$0")/ledger.sh"
info=Live.CallbackAfterMemberStateChanged
body=bench/body-230.json
results=$log/cpu.tsv
: >"$results"

names=("ceiling (bare hyper)" "stdout → /dev/null" "NATS core")
[[ -z ${BASELINE:-} ]] || names+=("NATS core, $BASELINE")
command_line() { # configuration number → its command line
  case $1 in
    0) echo "$ceiling 127.0.0.1:$port" ;;
    1) gateway --bus stdout ;;
    2) gateway --bus nats --nats-url $nats ;;
    3) bin=$BASELINE gateway --bus nats --nats-url $nats ;;
  esac
}
ready_path() { [[ $1 == 0 ]] && echo / || echo /readyz; }
bus_of() { case $1 in 0) echo ceiling ;; 1) echo stdout ;; *) echo nats ;; esac; } # configuration → its bus

count_nats
for round in $(seq 1 "$rounds"); do
  for n in "${!names[@]}"; do
    start "cpu-$n" $(command_line $n)
    wait_ready "$(ready_path $n)" >/dev/null
    sleep 0.5
    before=$(counted "$(bus_of $n)" gateway)
    saturate $pid $body "$(url $info)"
    settle "$(bus_of $n)" gateway $((responses - errors)) "$before"
    stop $pid
    [[ $ledger != void* ]] || echo "round $round, ${names[n]}: VOID: ${ledger#void: }" >&2
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "${names[n]}" "$rps" "$cpu_us" "$responses" "$errors" "$ledger" "$count" >>"$results"
  done
done
uncount

python3 - "$results" "$seconds" "${names[@]}" <<'PY'
import statistics, sys
results, seconds, names = sys.argv[1], sys.argv[2], sys.argv[3:]
every = [line.rstrip("\n").split("\t") for line in open(results)]
rows = [r for r in every if not r[6].startswith("void")]  # a void measurement is left out
rps = {name: [int(r[2]) for r in rows if r[1] == name] for name in names}
cpu = {name: [float(r[3]) for r in rows if r[1] == name] for name in names}
median = lambda values: statistics.median(values) if values else float("nan")
med_rps = {name: median(values) for name, values in rps.items()}
med_cpu = {name: median(values) for name, values in cpu.items()}
ceiling = names[0]
ratio = lambda a, b: a / b if b else float("nan")
print(f"Medians over {len(rps[ceiling])} round(s) of wrk -t1 -c64 -d{seconds}s, ~230-byte signed body:")
print()
print("| configuration | 2xx/s | × ceiling | CPU µs/req | CPU × ceiling |")
print("|---|---|---|---|---|")
for name in names:
    if not rps[name]:
        print(f"| {name} | VOID | — | — | — |")
        continue
    print(f"| {name} | {med_rps[name]:,.0f} | {ratio(med_rps[name], med_rps[ceiling]):.2f} | "
          f"{med_cpu[name]:.2f} | {ratio(med_cpu[name], med_cpu[ceiling]):.2f} |")
nats = names[2]
cpu_ratio, rps_ratio = ratio(med_cpu[nats], med_cpu[ceiling]), ratio(med_rps[nats], med_rps[ceiling])
print()
rounds_note = "" if len(rps[ceiling]) >= 7 else f"; {len(rps[ceiling])} rounds, the target asks for 7"
if rps[nats]:
    print(f"Target, {nats}: CPU/req {cpu_ratio:.2f} × ceiling (≤ 1.3: {'holds' if cpu_ratio <= 1.3 else 'misses'}{rounds_note}); "
          f"2xx/s {rps_ratio:.2f} × ceiling.")
else:
    print(f"Target, {nats}: not checked, every round VOID.")
print()
print("Ledger (each callback answered 200 counted by a subscriber on bench.>):")
for name in names:
    mine = [r for r in every if r[1] == name]
    void = [r for r in mine if r[6].startswith("void")]
    if mine and all(r[6].startswith("not counted") for r in mine):
        print(f"- {name}: {mine[0][6]}")
    else:
        print(f"- {name}: {len(mine) - len(void)} of {len(mine)} round(s) ok" +
              (f", {len(void)} VOID, left out of the medians" if void else ""))
print()
print("Rounds:")
def figures(r):
    if r[6].startswith("void"):
        return f"{r[1]} VOID ({r[6][6:]})"
    counted = "" if r[7] == "-" else f", {int(r[7]):,} counted"
    return f"{r[1]} {int(r[2]):,} 2xx/s, {float(r[3]):.2f} CPU µs/req ({int(r[4]):,} answers, {r[5]} errors{counted})"
for round_ in sorted({r[0] for r in every}, key=int):
    print(f"- round {round_}: " + "; ".join(figures(r) for r in every if r[0] == round_))
PY
