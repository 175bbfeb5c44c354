#!/usr/bin/env bash
# Fuzzes the parsers that take outside input, with cargo-fuzz (libFuzzer) on the nightly
# toolchain: the Graph delta page parser, the offsets-topic record decoder and the config
# loader. Any panic (or hang, or memory blow-up) fails the run and leaves the input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh            # 60 s per target (what the test command runs)
#   scripts/fuzz.sh 3600       # a long run: an hour per target
#   scripts/fuzz.sh 600 config # one target
#   FUZZ_SANITIZER=address scripts/fuzz.sh   # with AddressSanitizer (slower, see below)
#
# Reproduce a crash:  cargo +nightly fuzz run --release --debug-assertions --sanitizer none \
#                       <target> fuzz/artifacts/<target>/crash-…
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(delta_page offset_record config)
case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) echo "fuzz: seconds must be a number, got '$SECONDS_PER_TARGET'" >&2; exit 2 ;;
esac

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: installing the nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  t0=$(date +%s)
  cargo install cargo-fuzz --locked
  echo "fuzz: cargo-fuzz installed in $(( $(date +%s) - t0 )) s"
fi
echo "fuzz: $(cargo fuzz --version), $(cargo +nightly --version)"

# The targets exercise safe Rust only (no `unsafe` on these paths), where AddressSanitizer
# finds nothing that Rust's own checks (bounds, debug assertions, overflow checks) do not
# already turn into a panic, so the default is no sanitizer: several times the executions per
# second. `FUZZ_SANITIZER=address` also builds and runs (it instruments the Rust code only;
# librdkafka and aws-lc are C built by their build scripts), in its own target directory so
# the two builds do not overwrite each other.
SANITIZER="${FUZZ_SANITIZER:-none}"
FLAGS=(--release --debug-assertions --sanitizer "$SANITIZER")
[ "$SANITIZER" = none ] || FLAGS+=(--target-dir "fuzz/target/$SANITIZER")

echo "fuzz: building ${TARGETS[*]} (cargo +nightly fuzz build ${FLAGS[*]})"
t0=$(date +%s)
if [ ${#TARGETS[@]} -eq 3 ]; then
  cargo +nightly fuzz build "${FLAGS[@]}"
else
  for t in "${TARGETS[@]}"; do
    cargo +nightly fuzz build "${FLAGS[@]}" "$t"
  done
fi
echo "fuzz: built in $(( $(date +%s) - t0 )) s"

failed=()
for t in "${TARGETS[@]}"; do
  # New inputs go to the first directory (fuzz/corpus, ignored by git); the seeds are read only.
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  dict=()
  [ -f "fuzz/dicts/$t.dict" ] && dict=(-dict="fuzz/dicts/$t.dict")
  log="fuzz/$t.log"
  echo "fuzz: $t for ${SECONDS_PER_TARGET} s (log: $log)"
  set +e
  cargo +nightly fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=4096 \
    -print_final_stats=1 "${dict[@]}" </dev/null >"$log" 2>&1
  status=$?
  set -e
  grep -aE '^(#[0-9]+[[:space:]]+DONE|stat::number_of_executed_units|stat::average_exec_per_sec|stat::new_units_added|stat::peak_rss_mb)' "$log" || true
  # libFuzzer exits 0 when the time is up; non-zero on a panic, a timeout or out-of-memory,
  # after writing the input to fuzz/artifacts/<target>/.
  if [ "$status" -ne 0 ]; then
    grep -aE -A1 "panicked at" "$log" >&2 || tail -40 "$log" >&2
    grep -aE "^==[0-9]+== ERROR|^SUMMARY|Test unit written to" "$log" >&2 || true
    echo "fuzz: $t FAILED (exit $status); the input is in fuzz/artifacts/$t/ and the output in $log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
echo "fuzz: no crash in ${TARGETS[*]}"
