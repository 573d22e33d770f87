#!/usr/bin/env bash
# Installs (when missing) and starts (when not running) the brokers the tests talk to, and
# installs the third-party clients they check our output with. The brokers:
# NATS with JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672 (guest/guest) and a
# Kafka-protocol broker (tansu, in memory) on 127.0.0.1:9092. Idempotent: safe to rerun.
set -euo pipefail

log_dir=${HOOKBUS_SERVICES_LOG_DIR:-/tmp/hookbus-services}
mkdir -p "$log_dir"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name seconds
  local deadline=$((SECONDS + $3))
  until listening "$1"; do
    if ((SECONDS > deadline)); then
      echo "services: $2 did not start listening on $1 within $3 s (logs in $log_dir)" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "services: $2 is up on 127.0.0.1:$1"
}

apt_updated=
apt_install() {
  if [[ -z $apt_updated ]]; then
    apt-get update -qq
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! listening 4222; then
  command -v nats-server >/dev/null || apt_install nats-server
  mkdir -p /var/lib/nats-server
  start-stop-daemon --start --oknodo --background --exec "$(command -v nats-server)" -- \
    -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l "$log_dir/nats-server.log"
fi
wait_for 4222 NATS 30

if ! listening 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached
fi
wait_for 5672 RabbitMQ 120

if ! listening 9092; then
  tansu=$(command -v tansu || echo "${CARGO_HOME:-$HOME/.cargo}/bin/tansu")
  if [[ ! -x $tansu ]]; then
    echo "services: building the tansu Kafka-protocol broker (about 12 minutes, once per machine)"
    cargo install tansu --features dynostore --locked >"$log_dir/tansu-install.log" 2>&1 ||
      { tail -20 "$log_dir/tansu-install.log" >&2; exit 1; }
  fi
  nohup "$tansu" broker --listener-url tcp://127.0.0.1:9092 --advertised-listener-url tcp://127.0.0.1:9092 \
    --storage-engine memory://tansu/ >"$log_dir/tansu.log" 2>&1 &
fi
wait_for 9092 "Kafka (tansu)" 60

# Third-party tools the tests check our output with.
command -v promtool >/dev/null || apt_install --no-install-recommends prometheus
if ! python3 -c "import cloudevents.core.formats.json" 2>/dev/null; then
  echo "services: installing the CloudEvents Python SDK (PyPI cloudevents)"
  python3 -m pip install -q "cloudevents==2.2.0" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
if ! python3 -c "import jsonschema" 2>/dev/null; then
  echo "services: installing a JSON Schema validator (PyPI jsonschema)"
  python3 -m pip install -q "jsonschema==4.26.0" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
tools=${HOOKBUS_TOOLS_DIR:-/opt/hookbus-tools}
if [[ ! -d $tools/node_modules/@asyncapi/parser ]]; then
  echo "services: installing the AsyncAPI parser (npm @asyncapi/parser) in $tools"
  command -v npm >/dev/null || apt_install nodejs npm
  mkdir -p "$tools"
  (cd "$tools" && npm install --silent --no-audit --no-fund "@asyncapi/parser@3.6.3") >"$log_dir/npm.log" 2>&1 ||
    { tail -5 "$log_dir/npm.log" >&2; exit 1; }
fi
