#!/usr/bin/env bash
# Instructions per callback, counted by valgrind's callgrind: a figure that does not drift with
# the speed of a shared machine (the same binary and load give the same count within about 1 %).
# Each server runs under callgrind, is warmed for 2 s by wrk -t1 -c16 posting bench/body-230.json
# (a Seq field added per request), its counters are zeroed, then it is loaded for $seconds more
# and the user-space instructions of that stretch (the publisher's included: the script waits
# for the outbox to drain) are divided by the answers. User space only: the kernel's share
# (sockets, wake-ups) is not counted; bench/cpu.sh measures it.
# A server is one of:
#   ceiling           the bare hyper server answering the same body (bench/src/bin/ceiling.rs)
#   unsigned[=BIN]    the gateway with no token: the target's configuration
#   signed[=BIN]      the gateway checking the signature and remembering replays. Under valgrind,
#                     SHA-256 runs its portable code instead of the CPU's SHA instructions, so the
#                     signature and replay digests weigh several times what they do natively.
# BIN defaults to target/release/hookbus; a bare path means unsigned=PATH.
# Prints each server's count, its ratio to the ceiling (when one ran) and the target check, then
# where each gateway's instructions went, grouped by the code that ran them (self cost, so an
# inlined function counts where it was inlined), and each gateway's 25 costliest functions. The
# profiles stay in $log (callgrind_annotate reads them).
# Every gateway checks its ledger (bench/ledger.sh): each callback answered 200 in the measured
# stretch counted once the outbox drained (NATS core: a subscriber on bench.>; JetStream: the
# stream HOOKBUS_BENCH; RabbitMQ: an unbounded durable queue bound to the subject; Kafka: the
# topic's high watermark). A void one prints VOID instead of its count, and no profile. The
# warm-up drains before the counters are zeroed, so its publishes are neither counted nor
# charged. The ceiling (publishes nothing) and `--bus stdout` (to /dev/null) cannot be counted:
# the output says so.
# Target: unsigned on NATS core ≤ 2.0 × the ceiling, in one run.
# Usage: [BUS="--bus nats --nats-url URL"] bench/instructions.sh [seconds, 6] [server...]
#   servers default to: ceiling unsigned signed
source "$(dirname "$0")/setup.sh" "${1:-6}"
source "$(dirname "$0")/ledger.sh"
shift || true
command -v valgrind >/dev/null || apt_install valgrind
bus=${BUS:---bus nats --nats-url $nats}
case " $bus " in  # the bus the ledger counts
  *" --nats-jetstream "*) ledger_bus=jetstream ;;
  *" --bus amqp "*) ledger_bus=amqp ;;
  *" --bus kafka "*) ledger_bus=kafka ;;
  *" --bus stdout "*) ledger_bus=stdout ;;
  *) ledger_bus=nats ;;
esac
info=Live.CallbackAfterMemberStateChanged
callback=$(url $info)
post() { BENCH_BODY=bench/body-230.json wrk -t1 -c16 -d"$1" -s bench/post.lua "$callback"; }
results=$log/instructions.tsv
: >"$results"
counter=
[[ $ledger_bus != nats ]] || count_nats

n=0
for server in "${@:-ceiling unsigned signed}"; do
  for server in $server; do
    n=$((n + 1))
    out=$log/callgrind-$n.out
    rm -f "$out"*
    counts=$ledger_bus
    [[ $server != ceiling ]] || counts=ceiling
    prepare $counts
    case $server in
      ceiling)
        start callgrind valgrind --tool=callgrind --callgrind-out-file="$out" $ceiling 127.0.0.1:$port
        ready=/ ;;
      signed*)
        start callgrind valgrind --tool=callgrind --callgrind-out-file="$out" \
          $(bin=${server#signed=}; [[ $bin == signed ]] && bin=target/release/hookbus; gateway $bus)
        ready=/readyz ;;
      *)
        binary=${server#unsigned=}
        [[ $binary == unsigned ]] && binary=$bin
        # No --token: the app accepts unsigned callbacks (the URL's Sign is then ignored).
        start callgrind valgrind --tool=callgrind --callgrind-out-file="$out" \
          $binary serve --listen 127.0.0.1:$port --sdk-app-id $app --prefix bench $bus
        ready=/readyz ;;
    esac
    wait_ready $ready >/dev/null
    post 2s >/dev/null
    drain $counts gateway || true
    before=$(counted $counts gateway)
    callgrind_control --zero "$pid" >/dev/null 2>&1
    wrk_out=$(post "${seconds}s")
    answers=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")
    ok=$(( answers - $(awk '/Non-2xx/ { n += $5 } END { print n + 0 }' <<<"$wrk_out") ))
    # Slowed down by valgrind, the publisher may still be working through the outbox (each
    # /metrics request of the drain is counted in the dump: a handful against thousands).
    settle $counts gateway $ok "$before"
    callgrind_control --dump "$pid" >/dev/null 2>&1
    stop "$pid"
    [[ $ledger != void* ]] || echo "$server: VOID: ${ledger#void: }" >&2
    [[ $ledger != ok ]] || ledger="ok, $ok answered 200, $count counted"
    # The dump holds what ran between zero and dump; the file written at exit, the shutdown.
    # (The metrics requests above are counted too: a handful against thousands of callbacks.)
    instructions=$(awk '/^(summary|totals):/ { print $2; exit }' "$out.1")
    printf '%s\t%s\t%s\t%s\t%s\n' "$server" "$answers" "$instructions" "$out.1" "$ledger" >>"$results"
  done
done
uncount

python3 - "$results" <<'PY'
import importlib.util, sys
every = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
rows = [r[:4] for r in every if not r[4].startswith("void")]  # a void measurement is left out
ceiling = next((int(c) / int(a) for s, a, c, _ in rows if s == "ceiling"), None)
print("| server | answers counted | instructions per callback | × ceiling |")
print("|---|---|---|---|")
for server, answers, _, _, ledger in every:
    if ledger.startswith("void"):
        print(f"| {server} | {int(answers):,} | VOID | — |")
for server, answers, counted, _ in rows:
    per = int(counted) / int(answers)
    print(f"| {server} | {int(answers):,} | {per:,.0f} | {per / ceiling:.2f} |" if ceiling else
          f"| {server} | {int(answers):,} | {per:,.0f} | — |")
unsigned = [(s, int(c) / int(a)) for s, a, c, _ in rows if s.startswith("unsigned")]
if ceiling and unsigned:
    server, per = unsigned[0]
    ratio = per / ceiling
    print(f"\nTarget, {server}: {ratio:.2f} × the ceiling (≤ 2.0: {'holds' if ratio <= 2.0 else 'misses'}).")
print("\nLedger (each callback answered 200 counted once the outbox drained):")
for server, _, _, _, ledger in every:
    print(f"- {server}: {ledger}")

# Self cost by the code that ran it, first match wins (a demangled Rust path names its crate).
GROUPS = [
    ("HTTP (hyper, http, httparse)", r"\bhyper(_util)?::|\bhttp::|\bhttparse::|\bhttp_body(_util)?::"),
    ("checks (query, signature, replay, body, apps)",
     r"hookbus::(tencent|replay|apps|routes::check|routes::read_body)|\bserde_json::|\bsha2::|\bserde::"),
    ("message (ids, attributes, trace context)", r"hookbus::(bus::message|traces)|\buuid::|\bhumantime::"),
    ("routes and metrics", r"hookbus::(routes|metrics|http)"),
    ("outbox", r"hookbus::outbox"),
    ("publish (bus::nats)", r"hookbus::bus"),
    ("NATS client (async-nats)", r"\basync_nats::|\bnuid::"),
    ("runtime (tokio)", r"\btokio::|\bfutures_(util|core)::"),
    ("allocator (mimalloc)", r"\bmi_|mimalloc|_mi_"),
    ("hashing, copies and strings (std, libc; most SipHash is async-nats's HeaderMap)", r"\bmem(cpy|move|set|cmp|chr)|\bcore::|\balloc::|\bstd::"),
]
# Read by bench/profile.py (loaded by its path: the standard library has a `profile` too).
spec = importlib.util.spec_from_file_location("callgrind_profile", "bench/profile.py")
profile = importlib.util.module_from_spec(spec)
spec.loader.exec_module(profile)
for server, answers, counted, path in rows:
    if server != "ceiling":
        print()
        profile.report(path, int(answers), server, 25, GROUPS)
PY
