#!/usr/bin/env bash
# Starts (start) or stops (stop) the broker clusters the cluster tests kill nodes of, beside the
# single brokers of services.sh and on other ports, from the same Debian packages:
#   NATS with JetStream, 3 servers hb-n1..hb-n3: clients on 127.0.0.1:4301..4303, routes 6301..6303
#   RabbitMQ, 3 nodes hb1@localhost..hb3@localhost: AMQP on 127.0.0.1:5701..5703 (guest/guest),
#   distribution on 25701..25703
# and installs HAProxy (which the tests start themselves) when missing.
# Idempotent: `start` starts only what is not running (a node a test killed comes back and
# rejoins its cluster) and joins nodes 2 and 3 to node 1 once. Pid files, data and logs are in
# $HOOKBUS_CLUSTERS_DIR (default /tmp/hookbus-clusters): the tests read the pid files to kill.
set -euo pipefail

dir=${HOOKBUS_CLUSTERS_DIR:-/tmp/hookbus-clusters}
rabbit_bin=/usr/lib/rabbitmq/bin
mkdir -p "$dir"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # port name seconds
  local deadline=$((SECONDS + $3))
  until listening "$1"; do
    if ((SECONDS > deadline)); then
      echo "clusters: $2 did not start listening on $1 within $3 s (logs in $dir)" >&2
      exit 1
    fi
    sleep 0.5
  done
}

nats_start() {
  command -v nats-server >/dev/null || { echo "clusters: nats-server is not installed (apt-get install nats-server)" >&2; exit 1; }
  local n
  for n in 1 2 3; do
    listening "430$n" && continue
    mkdir -p "$dir/nats/n$n"
    cat >"$dir/nats/n$n.conf" <<EOF
server_name: hb-n$n
listen: 127.0.0.1:430$n
pid_file: "$dir/nats/n$n.pid"
log_file: "$dir/nats/n$n.log"
jetstream { store_dir: "$dir/nats/n$n" }
cluster {
  name: hookbus-test
  listen: 127.0.0.1:630$n
  routes: [nats-route://127.0.0.1:6301, nats-route://127.0.0.1:6302, nats-route://127.0.0.1:6303]
}
EOF
    nohup nats-server -c "$dir/nats/n$n.conf" >>"$dir/nats/n$n.out" 2>&1 &
  done
  for n in 1 2 3; do wait_for "430$n" "NATS hb-n$n" 30; done
  # JetStream answers once the servers have elected a meta leader.
  local deadline=$((SECONDS + 60))
  until [[ $(curl_nats_jsz) == ok ]]; do
    if ((SECONDS > deadline)); then
      echo "clusters: the NATS cluster has no JetStream meta leader after 60 s (logs in $dir/nats)" >&2
      exit 1
    fi
    sleep 0.5
  done
  echo "clusters: NATS cluster up on 127.0.0.1:4301,4302,4303"
}

# "ok" once a JetStream API request is answered by the cluster (asked over the client protocol).
curl_nats_jsz() {
  python3 - <<'PY' 2>/dev/null || echo no
import socket
s = socket.create_connection(("127.0.0.1", 4301), timeout=2)
f = s.makefile("rb")
f.readline()
s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\nSUB _r 1\r\nPUB $JS.API.INFO _r 0\r\n\r\nPING\r\n')
while True:
    line = f.readline()
    if line.startswith(b"MSG"):
        body = f.readline()
        print("ok" if b'"type":"io.nats.jetstream.api.v1.account_info_response"' in body and b'"error"' not in body else "no")
        break
    if line.startswith(b"HMSG") or not line:
        print("no")
        break
PY
}

rabbit_env() { # n → the environment of node n
  local n=$1 base=$dir/rabbit/hb$n
  echo HOME="$base/home" RABBITMQ_NODENAME="hb$n@localhost" RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT="570$n" RABBITMQ_DIST_PORT="2570$n" RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_LOG_BASE="$base/log" RABBITMQ_PID_FILE="$dir/rabbit/hb$n.pid" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
    RABBITMQ_CONF_ENV_FILE="$base/rabbitmq-env.conf" RABBITMQ_ADVANCED_CONFIG_FILE="$base/advanced.config" \
    ERL_EPMD_ADDRESS=127.0.0.1
}

rabbitmqctl_on() { # n args… → rabbitmqctl against node n, as node n's own user
  local n=$1
  shift
  env $(rabbit_env "$n") "$rabbit_bin/rabbitmqctl" -n "hb$n@localhost" "$@"
}

rabbit_start() {
  [[ -x $rabbit_bin/rabbitmq-server ]] || { echo "clusters: rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2; exit 1; }
  local n base
  for n in 1 2 3; do
    listening "570$n" && continue
    base=$dir/rabbit/hb$n
    mkdir -p "$base/home" "$base/mnesia" "$base/log"
    # One cookie for the three nodes and their CLI, not the system's.
    [[ -f $base/home/.erlang.cookie ]] || {
      echo -n HOOKBUSTESTCLUSTERCOOKIE >"$base/home/.erlang.cookie"
      chmod 400 "$base/home/.erlang.cookie"
    }
    echo '[].' >"$base/enabled_plugins"
    printf 'listeners.tcp.local = 127.0.0.1:570%s\n' "$n" >"$base/rabbitmq.conf"
    : >"$base/rabbitmq-env.conf"
    echo '[].' >"$base/advanced.config"
    env $(rabbit_env "$n") nohup "$rabbit_bin/rabbitmq-server" >>"$base/log/server.out" 2>&1 &

  done
  for n in 1 2 3; do wait_for "570$n" "RabbitMQ hb$n" 180; done
  for n in 2 3; do
    if ! rabbitmqctl_on "$n" cluster_status 2>/dev/null | grep -q "hb1@localhost"; then
      rabbitmqctl_on "$n" stop_app >/dev/null
      rabbitmqctl_on "$n" join_cluster hb1@localhost >/dev/null
      rabbitmqctl_on "$n" start_app >/dev/null
    fi
  done
  for n in 1 2 3; do rabbitmqctl_on "$n" await_startup >/dev/null; done
  # The tests kill nodes by their pid files. A node that runs without one (two starts of the
  # same node at once: the one refused removes the file on its way out) is asked for its pid.
  for n in 1 2 3; do
    [[ -s $dir/rabbit/hb$n.pid ]] || rabbitmqctl_on "$n" eval 'os:getpid().' | tr -dc 0-9 >"$dir/rabbit/hb$n.pid"
  done
  echo "clusters: RabbitMQ cluster up on 127.0.0.1:5701,5702,5703"
}

stop_pidfile() { # pid file
  [[ -f $1 ]] || return 0
  local pid
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}

case ${1:-} in
  start)
    # The load balancer in front of two gateways in the cluster tests.
    if ! command -v haproxy >/dev/null; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
    fi
    nats_start
    rabbit_start
    ;;
  stop)
    for n in 1 2 3; do stop_pidfile "$dir/nats/n$n.pid"; stop_pidfile "$dir/rabbit/hb$n.pid"; done
    echo "clusters: stopped"
    ;;
  *)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
