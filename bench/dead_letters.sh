#!/usr/bin/env bash
# What 10,000 dead letters cost: a NATS server of its own with max_payload 1024, the release
# gateway with and without a spool, 10,000 callbacks of 2 KB (each refused by the server, so
# each a dead letter); prints the gateway's RSS before and after, the dead-letter log's size and
# what the store counts. Its ledger is already checked: each callback must be answered 200 (the
# loader asserts it) and the figures are printed only once the gateway's dead-letter count
# (hookbus_dead_letters in /metrics) equals the callbacks sent, waiting until then.
# Usage: bench/dead_letters.sh [events] [body bytes]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-10000}
bytes=${2:-2000}
cargo build --release --quiet --bin hookbus
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listen: 127.0.0.1:%s\nmax_payload: 1024\n' "$port" >"$work/nats.conf"
nats-server -c "$work/nats.conf" 2>/dev/null &
sleep 0.5

rss() { awk '/^VmRSS|^VmHWM/ {printf "%s %d MB  ", $1, $2/1024}' "/proc/$1/status"; }

for mode in memory spool; do
  listen=127.0.0.1:$((port + 1))
  flags=(serve --bus nats --nats-url "nats://127.0.0.1:$port" --listen "$listen" --dead-letter-max-bytes 1000000000)
  [ "$mode" = spool ] && flags+=(--spool-dir "$work/spool")
  RUST_LOG=warn target/release/hookbus "${flags[@]}" 2>/dev/null &
  gateway=$!
  until curl -sf "http://$listen/healthz" >/dev/null; do sleep 0.05; done
  echo "$mode: before: $(rss $gateway)"
  python3 - "$listen" "$events" "$bytes" <<'EOF'
import http.client, json, sys, threading
listen, events, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
host, port = listen.split(":")
def post(start, step):
    connection = http.client.HTTPConnection(host, int(port))
    for n in range(start, events, step):
        body = json.dumps({"RoomId": f"room-{n % 100}", "Seq": n, "Pad": "x" * size})
        connection.request("POST", "/?SdkAppid=1400000000&CallbackCommand=Live.CallbackAfterEnterRoom", body)
        response = connection.getresponse()
        response.read()
        assert response.status == 200, response.status
threads = [threading.Thread(target=post, args=(i, 4)) for i in range(4)]
for thread in threads: thread.start()
for thread in threads: thread.join()
EOF
  until [ "$(curl -s "http://$listen/metrics" | awk '$1=="hookbus_dead_letters" {print $2}')" = "$events" ]; do sleep 0.2; done
  held=$(curl -s "http://$listen/metrics" | awk '$1=="hookbus_dead_letter_bytes" {print $2}')
  log=$( [ "$mode" = spool ] && stat -c %s "$work/spool/dead-letters.log" || echo 0)
  echo "$mode: after $events dead letters of $bytes-byte bodies: $(rss $gateway) store counts $((held / 1024)) KiB, dead-letter log $((log / 1024)) KiB"
  kill $gateway; wait $gateway 2>/dev/null || true
done
