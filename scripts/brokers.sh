# Shared by scripts/test and scripts/bench: installs and starts the test brokers on free
# loopback ports, exports TEST_KAFKA_BROKERS and TEST_NATS_URL, and stops what it started
# when the sourcing script exits (success, failure or Ctrl-C). Source it; do not run it.

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/fluent-ct-sync"
TOOLS="$CACHE/tools"
TANSU_VERSION=0.6.0
TANSU=""
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/fluent-ct-test.XXXXXX")"
started=()

log() { printf '\n==> %s\n' "$*" >&2; }

cleanup() {
  local status=$?
  for pid in "${started[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ] && [ -f "$RUN_DIR/tansu.log" ]; then
    echo "--- last lines of the tansu log ---" >&2
    tail -n 20 "$RUN_DIR/tansu.log" >&2 || true
  fi
  rm -rf "$RUN_DIR"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits until something accepts connections on 127.0.0.1:$1, or fails after $2 seconds.
wait_for_port() {
  local port=$1 deadline=$((SECONDS + $2))
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "nothing listens on 127.0.0.1:$port after $2 s" >&2
      return 1
    fi
    sleep 0.2
  done
}

# True when a NATS server answers at $1:$2 and its INFO line says JetStream is enabled.
nats_has_jetstream() {
  local info
  info="$(timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2 && head -n 1 <&3" 2>/dev/null)" || return 1
  [[ "$info" == INFO* && "$info" == *'"jetstream":true'* ]]
}

# Sets TANSU to a tansu of the pinned version: ours, else one on PATH, else builds ours.
ensure_tansu() {
  local candidate
  for candidate in "$TOOLS/bin/tansu" "$(command -v tansu || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      "$candidate" --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
      TANSU="$candidate"
      return
    fi
  done
  log "installing tansu $TANSU_VERSION into $TOOLS (once per machine; takes a while)"
  # Built in cargo's own temporary target dir, not the project's build cache.
  env -u CARGO_TARGET_DIR cargo install tansu --locked --version "$TANSU_VERSION" \
    --features dynostore --root "$TOOLS"
  TANSU="$TOOLS/bin/tansu"
}

start_kafka() {
  # The TLS tests start a tansu of their own behind a TLS proxy (tansu 0.6.0's own TLS cannot
  # be turned on: its CLI refuses --cert together with --key), even with another broker given.
  if [ -z "${TEST_TANSU_BIN:-}" ]; then
    ensure_tansu
    export TEST_TANSU_BIN="$TANSU"
  fi
  if [ -n "${TEST_KAFKA_BROKERS:-}" ]; then
    log "using the Kafka broker at $TEST_KAFKA_BROKERS"
    return
  fi
  TANSU="$TEST_TANSU_BIN"
  local port
  port="$(free_port)"
  log "starting tansu on 127.0.0.1:$port (in-memory storage)"
  # tansu also reads settings such as OTEL_EXPORTER_OTLP_ENDPOINT from the environment.
  env -u OTEL_EXPORTER_OTLP_ENDPOINT "$TANSU" broker \
    --listener-url "tcp://127.0.0.1:$port" \
    --advertised-listener-url "tcp://127.0.0.1:$port" \
    --storage-engine "memory://tansu/" >"$RUN_DIR/tansu.log" 2>&1 &
  started+=("$!")
  wait_for_port "$port" 60
  export TEST_KAFKA_BROKERS="127.0.0.1:$port"
}

start_nats() {
  if [ -n "${TEST_NATS_URL:-}" ]; then
    log "using the NATS server at $TEST_NATS_URL"
    return
  fi
  if nats_has_jetstream 127.0.0.1 4222; then
    log "using the NATS server with JetStream at 127.0.0.1:4222"
    export TEST_NATS_URL="nats://127.0.0.1:4222"
    return
  fi
  if ! command -v nats-server >/dev/null; then
    log "installing nats-server (Debian package)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
  fi
  local port
  port="$(free_port)"
  log "starting nats-server -js on 127.0.0.1:$port"
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$RUN_DIR/nats" >"$RUN_DIR/nats.log" 2>&1 &
  started+=("$!")
  wait_for_port "$port" 30
  export TEST_NATS_URL="nats://127.0.0.1:$port"
}

# librdkafka is built with TLS (SASL_SSL for managed Kafka) against the system's OpenSSL: its
# headers come from Debian's libssl-dev, installed here when missing.
ensure_build_deps() {
  if [ ! -f /usr/include/openssl/ssl.h ] && ! pkg-config --exists openssl 2>/dev/null; then
    log "installing OpenSSL's headers for librdkafka (Debian package libssl-dev)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev
  fi
}
