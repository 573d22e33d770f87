#!/usr/bin/env bash
# Decisions over NATS with and without 50 local rules, side by side: saturation (wrk, 2 threads,
# 64 connections, 200s counted) and latency at a fixed 10,000/s (bench/src/bin/load.rs, 32 connections).
# The 50 rules all apply before asking (when = "always") and none matches the benchmark's gift,
# so every request is checked against all of them and still asks the responder: the worst case.
# Two rounds, alternating, so that the noise of a shared machine shows.
# Every run checks its ledger (bench/ledger.sh): each decision answered 200, at saturation and at
# the fixed rate, is a reply counted in the gateway's /metrics (hookbus_decisions_total
# {outcome="reply"}), not a fallback; a void run prints VOID instead of its figures, and the
# ledger of each run follows the table.
# Usage: bench/rules.sh [seconds per measurement, default 10]
source "$(dirname "$0")/setup.sh"
source "$(dirname "$0")/ledger.sh"
gift=Live.CallbackBeforeSendGift

rules=$log/rules-50.toml
: >"$rules"
for n in $(seq 1 50); do
  cat >>"$rules" <<RULE
[[rule]]
name = "rule $n"
command = "$gift"
when = "always"
if = [{ field = "/GiftWater/From_Account", in = ["banned-$n-a", "banned-$n-b"] }, { field = "/GiftWater/Coins", ge = $n }]
decision = "deny"

RULE
done

$bin respond --bus nats --prefix bench >/dev/null 2>"$log/respond-rules.log" &
responder=$!
until grep -q "answering requests" "$log/respond-rules.log"; do sleep 0.05; done

echo "| rules | round | decisions/s at saturation | fixed rate | p50 ms | p99 ms | p99.9 ms | errors |"
echo "|---|---|---|---|---|---|---|---|"
ledgers=()
for round in 1 2; do
  for config in none 50; do
    extra=()
    [[ $config == none ]] || extra=(--rules "$rules")
    start "rules-$config" $(gateway --bus nats) "${extra[@]}"
    wait_ready /readyz >/dev/null
    before=$(counted decide-nats gateway)
    saturate $pid bench/body-gift.json "$(url $gift)"
    fixed=$($load --url "http://127.0.0.1:$port/" --rate 10000 --duration "${seconds}s" \
      --body bench/body-gift.json --command $gift --token $token)
    answered=$(( responses - errors + $(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["ok"])' "$fixed") ))
    settle decide-nats gateway $answered "$before"
    stop $pid
    [[ $ledger != void* ]] || echo "rules $config, round $round: VOID: ${ledger#void: }" >&2
    ledgers+=("rules $config, round $round: $ledger$([[ $ledger != ok ]] || echo " ($answered answered 200, $count replies counted)")")
    python3 - "$config" "$round" "$rps" "$fixed" "$ledger" <<'PY'
import json, sys
config, round_, rps, fixed, ledger = sys.argv[1:]
if ledger.startswith("void"):
    print(f"| {config} | {round_} | VOID | — | — | — | — | — |")
    sys.exit()
f = json.loads(fixed)
print(f"| {config} | {round_} | {int(rps):,} | {int(f['rate']):,} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['p999_ms']:.2f} | {f['errors']} |")
PY
  done
done
kill -TERM $responder
wait $responder || true
echo
echo "Ledger (each decision answered 200 is a reply counted in the gateway's /metrics):"
printf -- '- %s\n' "${ledgers[@]}"
