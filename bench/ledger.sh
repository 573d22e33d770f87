# Sourced by the benchmark scripts after setup.sh: each measurement's ledger, every callback
# answered 200 counted by the bus (NATS core: a subscriber on bench.>; JetStream: the stream's
# message count; RabbitMQ: the message count of an unbounded durable queue bound to the subject;
# Kafka: the topic's high watermark; a gateway's decisions: its replies counted in /metrics).
# Two buses cannot be counted, and say so: `stdout` (its events go to /dev/null, no consumer
# sees them) and `ceiling` (the bare hyper server publishes nothing). A caller tells a void
# measurement by $ledger starting with "void". The caller sets $info (the callback's command)
# and $port before it uses them.
kafka=127.0.0.1:9092

metric() { # name pattern → the sum of the gateway's samples of it
  curl -s "http://127.0.0.1:$port/metrics" | awk -v name="$1" -v pattern="$2" \
    'index($1, name) == 1 && $0 ~ pattern { n += $NF } END { print n + 0 }'
}

count_nats() { # [url, $nats] → a subscriber on bench.> counting into $log/nats-count; sets $counter
  rm -f "$log/nats-count"
  $admin nats-count "${1:-$nats}" 'bench.>' "$log/nats-count" &
  counter=$!
  until [[ -s $log/nats-count ]]; do sleep 0.05; done
}

uncount() { # stops count_nats's subscriber, if one runs
  [[ -z ${counter:-} ]] || stop "$counter"
  counter=
}

prepare() { # bus → the broker made ready for one measurement
  case $1 in
    jetstream) $admin jetstream-delete "$nats" HOOKBUS_BENCH ;;
    amqp) $admin amqp-sink "$amqp" tencent "bench.$info" 10000000 ;;
    kafka) $admin kafka-count $kafka "bench.$info" >/dev/null ;;
  esac
}

uncounted() { # bus → why it cannot be counted (nothing when it can)
  case $1 in
    stdout) echo "not counted: the stdout bus writes to /dev/null, no consumer sees its events" ;;
    ceiling) echo "not counted: the bare hyper ceiling publishes nothing" ;;
  esac
}

counted() { # bus program → what the bus counted so far (decisions: the replies; - uncounted)
  case $1 in
    stdout | ceiling) echo - ;;
    nats) cat "$log/nats-count" ;;
    jetstream) $admin jetstream-count "$nats" HOOKBUS_BENCH ;;
    amqp) $admin amqp-count "$amqp" "bench.sink.bench.$info" ;;
    kafka) $admin kafka-count $kafka "bench.$info" ;;
    decide-*) [[ $2 == gateway ]] && metric hookbus_decisions_total 'outcome="reply"' || echo legs ;;
  esac
}

drain() { # bus program → returns once what was answered 200 is confirmed (1 after 120 s)
  local started=$SECONDS
  [[ $1 != ceiling ]] || return 0  # nothing published, nothing to wait for
  if [[ $2 == gateway ]]; then
    until [[ $(metric hookbus_outbox_depth '') == 0 ]]; do
      (( SECONDS - started < 120 )) || return 1
      sleep 0.05
    done
  else
    until curl -sf -o /dev/null "http://127.0.0.1:$port/drained"; do
      (( SECONDS - started < 120 )) || return 1
      sleep 0.05
    done
  fi
  # A consumer counts what the broker passed on a little later, and a decision still in flight
  # when wrk stopped is counted when its reply comes: until two reads agree.
  if [[ $1 == nats || $1 == decide-* ]]; then
    local last=-1 now
    now=$(counted "$1" "$2")
    while [[ $now != "$last" ]]; do last=$now; sleep 0.3; now=$(counted "$1" "$2"); done
  fi
}

# bus ok before after drained [retried] → $ledger: "ok" when the bus counted every callback
# answered 200 (and at most 64 more: requests in flight when the load stopped, accepted but whose
# answer the load no longer read), else why the measurement is void; $count: what the bus
# counted. With retried 1 (a broker outage in the measurement), any more may be counted: the
# outbox publishes again, at least once, what the broker had not confirmed; none may be missing.
ledger() {
  local markers=0
  [[ $1 != kafka ]] || markers=1  # the marker record the count before wrote (admin kafka-count)
  if [[ -n $(uncounted "$1") ]]; then
    ledger=$(uncounted "$1") count=-
  elif [[ $4 == legs ]]; then
    ledger=ok count=$2  # the legs answer a decision 200 only with its reply
  elif count=$(($4 - $3 - markers)); (( $5 && count >= $2 && (count <= $2 + 64 || ${6:-0}) )); then
    ledger=ok
  else
    ledger="void: $2 answered 200, $(($4 - $3)) counted$( (($5)) || echo ', never drained')"
  fi
}

# bus program ok before [retried] → drains, then $ledger and $count as `ledger` gives them for
# what the bus counted since `before`.
settle() {
  local drained=1
  drain "$1" "$2" || drained=0
  ledger "$1" "$3" "$4" "$(counted "$1" "$2")" $drained "${5:-0}"
}
