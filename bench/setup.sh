# Sourced by the benchmark scripts: the common settings, the tools (wrk, gnuplot, the brokers, a
# release build) and the helpers they share: url COMMAND, the signed callback URL for COMMAND
# (RequestTime now: each measurement is well under the 60 s skew); gateway, start, wait_ready,
# stop, cpu_ticks and saturate.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
# Another run on the same machine sets its own (BENCH_PORT, BENCH_LOG), or the two collide.
port=${BENCH_PORT:-18080}
token=bench-token
app=1400000000
log=${BENCH_LOG:-/tmp/hookbus-bench}
nats=nats://127.0.0.1:4222
amqp=amqp://guest:guest@127.0.0.1:5672/%2f
mkdir -p "$log"
# A script that stops half-way leaves no server behind on $port for the next to measure instead.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
apt_updated=
apt_install() {
  [[ -n $apt_updated ]] || { apt-get update -qq && apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
command -v wrk >/dev/null || apt_install wrk
command -v gnuplot >/dev/null || apt_install gnuplot-nox
scripts/services.sh >/dev/null
cargo build --release --locked --workspace --bins 2>&1 | tail -1 >&2
bin=target/release/hookbus
load=target/release/load
admin=target/release/admin
ceiling=target/release/ceiling
legs=target/release/legs
clk_tck=$(getconf CLK_TCK)

url() {
  local now sign
  now=$(date +%s)
  sign=$(printf '%s%s' "$token" "$now" | sha256sum | cut -d' ' -f1)
  echo "http://127.0.0.1:$port/?SdkAppid=$app&CallbackCommand=$1&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign=$sign&RequestTime=$now"
}

gateway() { # extra flags... → a signed gateway command line on $port
  echo "$bin serve --listen 127.0.0.1:$port --sdk-app-id $app --token $token --prefix bench $*"
}

start() { # name program args... → $pid; stdout dropped, stderr in $log/NAME.log
  local name=$1
  shift
  "$@" >/dev/null 2>"$log/${name//[^a-zA-Z0-9]/_}.log" &
  pid=$!
}

wait_ready() { # path → milliseconds until it answers 200
  local started=$(date +%s%N)
  until curl -sf -o /dev/null "http://127.0.0.1:$port$1"; do
    (( $(date +%s%N) - started < 30000000000 )) || { echo "not ready after 30 s" >&2; return 1; }
    sleep 0.005
  done
  echo $(( ($(date +%s%N) - started) / 1000000 ))
}

stop() { # pid
  kill -TERM "$1"
  wait "$1" || true
}

cpu_ticks() { # pid → its utime + stime so far (all threads), in clock ticks
  local stat fields
  stat=$(<"/proc/$1/stat") || return 1
  # Fields 14 and 15, counted after the command name: it is in parentheses and may hold spaces.
  read -ra fields <<<"${stat##*) }"
  echo $(( fields[11] + fields[12] ))
}

# pid body url → wrk -t1 -c64 for $seconds, posting body to url (one load-generator thread: the
# performance targets are stated for it). Sets responses (every answer wrk counted, whatever its
# status), errors (answers not 2xx and socket errors), rps (the other answers per second) and
# cpu_us (pid's CPU time over the run per response, µs).
saturate() {
  local before after wrk_out
  before=$(cpu_ticks "$1")
  wrk_out=$(BENCH_BODY=$2 wrk -t1 -c64 -d"${seconds}s" -s bench/post.lua "$3")
  after=$(cpu_ticks "$1")
  responses=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")
  errors=$(awk '/Non-2xx/ { n += $5 } /Socket errors/ { n += $4 + $6 + $8 + $10 } END { print n + 0 }' <<<"$wrk_out")
  rps=$(( (responses - errors) / seconds ))
  cpu_us=$(awk -v ticks=$((after - before)) -v hz="$clk_tck" -v n="$responses" \
    'BEGIN { printf "%.2f", (n > 0 ? ticks * 1e6 / hz / n : 0) }')
}
