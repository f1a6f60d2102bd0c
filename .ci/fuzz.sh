#!/usr/bin/env bash
# Fuzz smoke run: builds every cargo-fuzz target in fuzz/ and runs each for a bounded time.
# Fails if any target crashes, fails an invariant, hangs, or runs out of memory; prints each
# target's execution count. See docs/FUZZING.md.
#
#   FUZZ_SECONDS        seconds per parser target (default 20)
#   FUZZ_API_SECONDS    seconds for api_ops (default 30)
#   FUZZ_TARGETS        space-separated subset of targets to run (default: all)
#   RINGQUIC_FUZZ_TARGET_DIR  build directory, kept between runs so a rebuild is incremental
#                       (default ~/.cache/ringquic-fuzz/target; it is only a cache)
#
# The machine has the stable toolchain only: cargo-fuzz's -Z flags (sanitizer, coverage) are
# allowed by RUSTC_BOOTSTRAP=1. Crash inputs kept in fuzz/crashes/ are NOT replayed here.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS="${FUZZ_SECONDS:-20}"
FUZZ_API_SECONDS="${FUZZ_API_SECONDS:-30}"
ALL_TARGETS="cmsg_parse cmsg_roundtrip sockaddr_parse gro_split perf_header api_ops"
TARGETS="${FUZZ_TARGETS:-$ALL_TARGETS}"
TARGET_DIR="${RINGQUIC_FUZZ_TARGET_DIR:-$HOME/.cache/ringquic-fuzz/target}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTC_BOOTSTRAP=1
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

step() { printf '\n=== fuzz: %s (%ss)\n' "$*" "$SECONDS"; }

step "cargo-fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz --version

step "build (release, debug assertions, AddressSanitizer, into $TARGET_DIR)"
mkdir -p "$TARGET_DIR"
cargo fuzz build -O --debug-assertions --target-dir "$TARGET_DIR"
BIN="$TARGET_DIR/$TRIPLE/release"

passed=0
failed=0
failures=""
summary=""

run_target() {
  local t="$1" secs="$2"
  shift 2
  local corpus="fuzz/corpus/$t" artifacts="fuzz/artifacts/$t/" log
  mkdir -p "$corpus" "$artifacts"
  if [ -d "fuzz/seeds/$t" ]; then
    cp -n "fuzz/seeds/$t"/* "$corpus"/ 2>/dev/null || true
  fi
  log="$(mktemp)"
  step "$t for ${secs}s"
  local rc=0
  # libFuzzer stops itself after max_total_time; the outer timeout only catches a process that
  # does not exit (e.g. stuck in teardown).
  timeout --kill-after=10 "$((secs + 60))" "$BIN/$t" "$corpus" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$artifacts" "$@" >"$log" 2>&1 || rc=$?
  local execs rate cov corp
  # (|| true: a target that crashed early has printed no statistics; set -e must not stop here)
  execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1 || true)"
  rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1 || true)"
  cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2 || true)"
  corp="$(find "$corpus" -type f | wc -l || true)"
  local line
  line="$(printf '%-15s execs %-10s exec/s %-8s cov %-6s corpus %-5s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$corp")"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    summary="$summary$line ok"$'\n'
    echo "$line ok"
  else
    failed=$((failed + 1))
    failures="$failures $t"
    summary="$summary$line FAILED (exit $rc)"$'\n'
    echo "$line FAILED (exit $rc); the end of its log:"
    grep -vE '^#[0-9]+\s+(NEW|REDUCE|pulse)|^\s+NEW_FUNC' "$log" | tail -60 || true
    local a
    for a in "$artifacts"*; do
      [ -f "$a" ] || continue
      echo "--- input $a ($(wc -c <"$a") bytes; replay: $BIN/$t $a)"
      od -A x -t x1z -v "$a" | head -40 || true
    done
  fi
  rm -f "$log"
}

for t in $TARGETS; do
  case "$t" in
    api_ops)
      # Each input is a whole connection (~5 ms): entropic scheduling costs more than the input
      # itself here, and long operation sequences are the point, so skip the slow length ramp.
      # Per-input leak checks re-run every input (the I/O threads free memory after the input
      # ends, so libFuzzer always suspects a leak): off; LeakSanitizer still checks at exit.
      run_target "$t" "$FUZZ_API_SECONDS" -entropic=0 -print_funcs=0 -max_len=600 -len_control=0 \
        -detect_leaks=0
      ;;
    *) run_target "$t" "$FUZZ_SECONDS" ;;
  esac
done

step "summary"
printf '%s' "$summary"
echo "fuzz: $passed passed, $failed failed"
if [ "$failed" -ne 0 ]; then
  echo "fuzz targets that found a bug:$failures (inputs above; keep them under fuzz/crashes/)"
  exit 1
fi
