#!/usr/bin/env bash
# Instructions per callback, counted by valgrind's callgrind: a figure for comparing two builds
# that does not drift with the speed of a shared machine (the same binary and load give the same
# count within about 1 %). Each server runs under callgrind, is warmed for 2 s by wrk -t1 -c16
# posting bench/body-230.json (signed, a Seq field added per request), its counters are zeroed,
# then it is loaded for $seconds more and the user-space instructions of that stretch are divided
# by the answers. User space only: the kernel's share (sockets, wake-ups) is not counted.
# Under valgrind, SHA-256 runs its portable code instead of the CPU's SHA instructions, so the
# signature and replay digests weigh several times what they do natively: compare builds of the
# gateway with each other, not with the ceiling.
# Usage: [BUS="--bus nats --nats-url URL"] bench/instructions.sh [seconds] [binary...]
#   binaries default to target/release/hookbus; "ceiling" means the bare hyper server.
source "$(dirname "$0")/setup.sh" "${1:-6}"
shift || true
command -v valgrind >/dev/null || apt_install valgrind
bus=${BUS:---bus nats --nats-url $nats}
callback=$(url Live.CallbackAfterMemberStateChanged)
post() { BENCH_BODY=bench/body-230.json wrk -t1 -c16 -d"$1" -s bench/post.lua "$callback"; }

echo "| server | answers counted | instructions per callback |"
echo "|---|---|---|"
for server in "${@:-$bin}"; do
  out=$log/callgrind.out
  rm -f "$out"*
  if [[ $server == ceiling ]]; then
    start callgrind valgrind --tool=callgrind --callgrind-out-file="$out" $ceiling 127.0.0.1:$port
    wait_ready / >/dev/null
  else
    start callgrind valgrind --tool=callgrind --callgrind-out-file="$out" $(bin=$server gateway $bus)
    wait_ready /readyz >/dev/null
  fi
  post 2s >/dev/null
  callgrind_control --zero "$pid" >/dev/null 2>&1
  answers=$(post "${seconds}s" | awk '/requests in/ { print $1 }')
  # Slowed down by valgrind, the publisher may still be working through the outbox.
  until [[ $server == ceiling ]] || curl -s "http://127.0.0.1:$port/metrics" | grep -q '^hookbus_outbox_depth 0$'; do
    sleep 0.2
  done
  callgrind_control --dump "$pid" >/dev/null 2>&1
  stop "$pid"
  # The dump holds what ran between zero and dump; the file written at exit, the shutdown.
  # (The metrics requests above are counted too: a handful against thousands of callbacks.)
  counted=$(awk '/^(summary|totals):/ { print $2; exit }' "$out.1")
  echo "| $server | $answers | $(( counted / answers )) |"
done
