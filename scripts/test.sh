#!/usr/bin/env bash
# The test command (README, second command; CI runs it through .ci/run).
# Installs what the project needs, then runs formatting, lint and every test against the
# Graph simulator and one real Apache Kafka broker started for the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

step "prerequisites"
if ! have cargo; then echo "cargo not found: install Rust with rustup" >&2; exit 1; fi
# java and mvn run the Kafka broker; openssl makes the certificates of its TLS listeners.
if ! have java || ! have mvn || ! have openssl; then
  if have apt-get && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless maven openssl >/dev/null
  else
    echo "java, mvn and openssl are needed for the Kafka broker (apt-get install openjdk-17-jre-headless maven openssl)" >&2
    exit 1
  fi
fi
# librdkafka's build: OpenSSL (TLS, SASL SCRAM), and libcurl's headers, without which its
# configure step quietly leaves out OIDC token fetching (sasl.oauthbearer.method=oidc; the
# curl linked in is still the static one the curl-sys crate builds).
missing=()
for pkg in libssl-dev libcurl4-openssl-dev pkg-config zlib1g-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if have apt-get && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
    # A librdkafka configured before they were there lacks what they bring (OIDC without
    # libcurl's headers), and cargo would not configure it again by itself.
    cargo clean -q -p rdkafka-sys 2>/dev/null || true
  else
    echo "the Kafka client build needs: apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
# cargo-nextest runs the tests in parallel processes when present; plain cargo test otherwise
# (installing it from source would cost CI ten minutes).
runner=(cargo test --workspace)
if cargo nextest --version >/dev/null 2>&1; then runner=(cargo nextest run --workspace --no-fail-fast); fi
{ java -version 2>&1 | head -1; mvn -v 2>/dev/null | head -1; openssl version; cargo --version; } || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

# The dependency audit (deny.toml): RustSec advisories, licences, banned crates, crates.io as the
# only source, and a self-test that each of those can fail. A run of a subset of tests skips it.
if [ $# -eq 0 ]; then
  step "supply chain: cargo deny (advisories, licences, bans, sources); a cold cache first builds cargo-deny (~6 min)"
  bash scripts/supply_chain.sh
fi

step "lean product build: --no-default-features holds neither graph-sim nor graph-cdc-testkit"
if cargo tree -p graph-cdc -e normal --no-default-features --prefix none | grep -E '^graph-(sim|cdc-testkit) '; then
  echo "the product's normal dependency tree holds the simulator or the test kit" >&2
  exit 1
fi
# Built first and put aside, so the workspace build below leaves target/debug/graph-cdc whole.
cargo build -p graph-cdc --no-default-features --bin graph-cdc
cp target/debug/graph-cdc target/lean-graph-cdc

step "build"
cargo build --workspace --all-targets

step "packaging: Helm chart, Kubernetes schemas, compose file, Dockerfile"
venv=.cache/venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check \
  helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 pyyaml jsonschema kafka-connect-py==1.0.0
spec=.cache/compose_spec.json
if [ ! -s "$spec" ]; then
  # The Compose specification's schema, taken out of the docker-compose 1.29.2 wheel.
  "$venv/bin/pip" download -q --no-deps -d .cache/compose-wheel docker-compose==1.29.2
  "$venv/bin/python" -c "import glob, zipfile, sys; z = zipfile.ZipFile(glob.glob('.cache/compose-wheel/*.whl')[0]); open(sys.argv[1], 'wb').write(z.read('compose/config/compose_spec.json'))" "$spec"
fi
"$venv/bin/python" scripts/check_packaging.py target/debug/graph-cdc "$spec"

step "Kafka broker (Apache Kafka from Maven Central, KRaft, loopback; plaintext, SASL_SSL/SCRAM, mTLS)"
work=$(mktemp -d)
broker_pid=
cleanup() {
  # Closing the broker's stdin stops it; its watchdog reaps the JVM whatever happens.
  exec 3>&- 2>/dev/null || true
  if [ -n "$broker_pid" ]; then
    for _ in $(seq 1 40); do kill -0 "$broker_pid" 2>/dev/null || break; sleep 0.25; done
    kill "$broker_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT
mkfifo "$work/stdin"
# It writes broker.json (listeners, certificates, SCRAM users) before the bootstrap file.
./target/debug/kafka-broker "$work/bootstrap" "$work/broker.json" < "$work/stdin" &
broker_pid=$!
exec 3>"$work/stdin"
for _ in $(seq 1 600); do
  [ -s "$work/bootstrap" ] && break
  if ! kill -0 "$broker_pid" 2>/dev/null; then echo "the Kafka broker failed to start" >&2; exit 1; fi
  sleep 0.5
done
[ -s "$work/bootstrap" ] || { echo "the Kafka broker did not start in time" >&2; exit 1; }
export GRAPH_CDC_TEST_KAFKA=$(cat "$work/bootstrap")
export GRAPH_CDC_TEST_KAFKA_INFO="$work/broker.json"
echo "broker at $GRAPH_CDC_TEST_KAFKA (secured listeners: $GRAPH_CDC_TEST_KAFKA_INFO)"

if [ $# -eq 0 ]; then
  step "shipped binaries: graph-sim, and graph-cdc without the demo, against the broker"
  bash scripts/shipped_binaries.sh target/lean-graph-cdc target/debug/graph-sim "$GRAPH_CDC_TEST_KAFKA"
fi

step "tests"
"${runner[@]}" "$@"

# Fuzzing the parsers of outside input (scripts/fuzz.sh): a short run per target on every full
# run; GRAPH_CDC_FUZZ_SECONDS=0 (or running a subset of tests) skips it.
fuzz_seconds="${GRAPH_CDC_FUZZ_SECONDS:-60}"
if [ $# -eq 0 ] && [ "$fuzz_seconds" != 0 ]; then
  step "fuzz: delta pages, offset records, config (${fuzz_seconds} s each)"
  # cargo fuzz needs a nightly toolchain: use the machine's, or install one; a machine that
  # can reach neither says so loudly instead of failing every other check with it.
  if rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal; then
    bash scripts/fuzz.sh "$fuzz_seconds"
  else
    echo "!! fuzz SKIPPED: no nightly toolchain here and none could be installed" >&2
  fi
fi
