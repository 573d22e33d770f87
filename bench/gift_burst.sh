#!/usr/bin/env bash
# A burst of 2,000 gifts at once against a NATS responder that answers after 1.7 s (slower than
# the 1.5 s decision timeout), with every default of the gateway: each gift must get a connection
# at once and its fallback within Tencent's 2 s. Prints the burst's figures and the gateway's
# peak RSS. No ledger to check: by design every gift is answered by the fallback, so no reply is
# counted and nothing is published; the figures are how many were answered 200 and when.
# Usage: bench/gift_burst.sh [gifts, default 2000] [extra serve flags...]
source "$(dirname "$0")/setup.sh" 10
gifts=${1:-2000}
shift || true
ulimit -n "$(ulimit -Hn)"
$bin respond --bus nats --nats-url $nats --prefix bench --decision 0 --delay 1700ms >"$log/respond.log" 2>&1 &
responder=$!
# shellcheck disable=SC2046 # the gateway's command line is meant to split into words
start gift-burst $(gateway --bus nats --nats-url $nats "$@")
wait_ready /readyz >/dev/null
python3 bench/gift_burst.py "http://127.0.0.1:$port/" "$token" "$app" "$gifts"
echo "gateway peak RSS: $(awk '$1 == "VmHWM:" { print int($2 / 1024) " MB" }' "/proc/$pid/status")"
stop $pid
kill $responder
