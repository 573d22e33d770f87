# Sourced by the benchmark scripts: the common settings, the tools (wrk, the brokers, a release
# build) and url COMMAND, the signed callback URL for COMMAND (RequestTime now: each measurement
# is well under the 60 s skew).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
port=18080
token=bench-token
app=1400000000
log=/tmp/hookbus-bench
mkdir -p "$log"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
scripts/services.sh >/dev/null
cargo build --release --locked --bins --examples 2>&1 | tail -1 >&2
bin=target/release/hookbus
load=target/release/examples/load

url() {
  local now sign
  now=$(date +%s)
  sign=$(printf '%s%s' "$token" "$now" | sha256sum | cut -d' ' -f1)
  echo "http://127.0.0.1:$port/?SdkAppid=$app&CallbackCommand=$1&contenttype=json&ClientIP=127.0.0.1&OptPlatform=RESTAPI&Sign=$sign&RequestTime=$now"
}
