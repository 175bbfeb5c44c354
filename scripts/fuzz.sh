#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, with cargo-fuzz (libFuzzer) on the nightly
# toolchain: the Graph delta page parser, the offsets-topic record decoder and the config
# loader. Any panic fails the run and leaves the input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 60 s per target (what the test command runs)
#   scripts/fuzz.sh 3600       # a long run: an hour per target
#   scripts/fuzz.sh 600 config # one target
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(delta_page offset_record config)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# The fuzz crate builds the library with its own target directory; the address sanitizer
# would also have to instrument librdkafka's C code, which gains nothing for these Rust
# parsers, so coverage-guided fuzzing runs without a sanitizer (Rust's own checks stay on:
# debug assertions and overflow checks).
FLAGS=(--release --debug-assertions --sanitizer none)
echo "fuzz: building ${TARGETS[*]}"
t0=$(date +%s)
for t in "${TARGETS[@]}"; do
  cargo +nightly fuzz build "${FLAGS[@]}" "$t"
done
echo "fuzz: built in $(( $(date +%s) - t0 )) s"

for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  rm -rf "fuzz/artifacts/$t"
  echo "fuzz: $t for ${SECONDS_PER_TARGET} s"
  set +e
  cargo +nightly fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb=4096 -print_final_stats=1 \
    >"fuzz/$t.log" 2>&1
  status=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added)' "fuzz/$t.log" || true
  # libFuzzer exits 0 when the time is up, non-zero on a crash (the input is in artifacts/).
  if [ "$status" -ne 0 ]; then
    tail -40 "fuzz/$t.log" >&2
    echo "fuzz: $t failed (exit $status); crashing inputs: $(ls "fuzz/artifacts/$t" 2>/dev/null || true)" >&2
    exit 1
  fi
done
echo "fuzz: no crash in ${TARGETS[*]}"
