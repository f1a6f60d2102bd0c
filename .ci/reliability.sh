#!/usr/bin/env bash
# Leak checks for ringquic (docs/RELIABILITY.md, "No leaks"). Exits non-zero if any byte is
# definitely lost, or if a leak checker fails to report a leak planted on purpose.
#
# 1. LeakSanitizer (RUSTFLAGS=-Zsanitizer=leak; RUSTC_BOOTSTRAP=1 lets the stable toolchain take
#    the flag), both backends: the library's unit tests, then the churn test at full size
#    (1000 connections, 10 endpoint pairs per backend). Built at opt-level 0 in target/lsan so
#    the build stays short and does not disturb the normal build.
# 2. valgrind memcheck, poll backend: the churn test with RINGQUIC_CHURN_CONNS (default 200)
#    connections. It reuses the normal test build (call this after the test step of .ci/run).
#    The io_uring backend cannot run under valgrind 3.19: the I/O thread sleeps in
#    io_uring_enter while holding valgrind's scheduler lock and the process deadlocks, so the
#    io_uring path is leak-checked by LeakSanitizer (step 1) only.
# Each checker is first shown a 4 KiB leak (RINGQUIC_CHURN_LEAK_CANARY=1) and must report it.
#
# Budget: under 5 minutes on a 2-core machine (about 1.5 minutes with the test build cached).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== reliability: %s (%ss)\n' "$*" "$SECONDS"; }
fail() { echo "FAILED: $*" >&2; exit 1; }
# The test executable a `cargo test --no-run` command builds (cargo's output on stderr).
test_binary() { python3 .ci/test_binaries.py --package-dir ringquic -- "$@"; }

TEST=churn_connections_and_endpoints_without_leaks
HOST=$(rustc -vV | sed -n 's/^host: //p')
# Run the churn test in this process (no child process), without the RSS bound (meaningless
# under a leak checker).
export RINGQUIC_TEST_CHILD_CHURN=1 RINGQUIC_CHURN_SKIP_RSS=1

# --- 1. LeakSanitizer --------------------------------------------------------------------------
step "LeakSanitizer build (opt-level 0, target/lsan)"
lsan_cargo=(env RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Zsanitizer=leak" cargo test -p ringquic --all-features
  --target "$HOST" --target-dir target/lsan
  --config 'profile.dev.opt-level=0' --config 'profile.dev.package."*".opt-level=0'
  --config 'profile.dev.debug="line-tables-only"')
"${lsan_cargo[@]}" --lib --no-run
churn_lsan=$(test_binary "${lsan_cargo[@]}" --test robust_churn --no-run)
[ -x "$churn_lsan" ] || fail "could not find the LeakSanitizer churn test binary"

# planted_leak CHECKER EXPECTED CMD...: CMD (a churn run with the leak canary on) must fail and
# print EXPECTED, or the checker would not see a real leak either.
planted_leak() {
  local checker=$1 expected=$2 out rc
  shift 2
  step "$checker: the checker reports a planted leak"
  set +e
  out=$(RINGQUIC_CHURN_LEAK_CANARY=1 "$@" 2>&1)
  rc=$?
  set -e
  if [ "$rc" = 0 ] || ! grep -q "$expected" <<<"$out"; then
    echo "$out" | tail -20
    fail "$checker did not report the planted leak (exit $rc)"
  fi
  echo "ok: planted leak reported (exit $rc)"
}

planted_leak LeakSanitizer "LeakSanitizer: detected memory leaks" \
  env RINGQUIC_CHURN_CONNS=8 RINGQUIC_CHURN_ENDPOINTS=2 \
  timeout -k 10 120 "$churn_lsan" --exact "$TEST" --test-threads=1

step "LeakSanitizer: library unit tests (both backends)"
LSAN_OPTIONS=exitcode=23 timeout -k 10 300 "${lsan_cargo[@]}" --lib ||
  fail "library unit tests under LeakSanitizer (exit 23 = leak)"

step "LeakSanitizer: churn, 1000 connections x 10 endpoint pairs per backend"
LSAN_OPTIONS=exitcode=23 timeout -k 10 300 "$churn_lsan" --exact "$TEST" --test-threads=1 --nocapture ||
  fail "churn under LeakSanitizer (exit 23 = leak)"
echo "ok: LeakSanitizer found no leak"

# --- 2. valgrind memcheck (poll backend) -------------------------------------------------------
step "valgrind memcheck (poll backend)"
if ! command -v valgrind >/dev/null; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind; } >/dev/null 2>&1 || true
fi
if ! command -v valgrind >/dev/null; then
  echo "SKIPPED: valgrind is not installed and could not be installed; LeakSanitizer ran above"
  step "done"
  exit 0
fi
valgrind --version
# --workspace, as the README test command: with -p ringquic cargo resolves features for that
# package alone and builds ringquic again (~40 s).
churn_bin=$(test_binary cargo test --workspace --all-features --test robust_churn --no-run)
[ -x "$churn_bin" ] || fail "could not find the churn test binary"
# Uninitialised-value tracking is off: ring's AES-GCM assembly makes memcheck report bytes it
# wrote as uninitialised (in sendmsg and in the AEAD tag comparison). Invalid reads and writes
# are still errors, and every definitely lost byte is one.
vg() {
  RINGQUIC_BACKEND=poll timeout -k 10 240 valgrind --leak-check=full --errors-for-leak-kinds=definite \
    --undef-value-errors=no --error-exitcode=1 "$churn_bin" --exact "$TEST" --test-threads=1 --nocapture
}

RINGQUIC_CHURN_CONNS=4 RINGQUIC_CHURN_ENDPOINTS=1 planted_leak valgrind "definitely lost: 4,096 bytes" vg

conns=${RINGQUIC_CHURN_CONNS:-200}
step "valgrind: churn, $conns connections x 10 endpoint pairs, poll backend"
log=target/reliability-valgrind.log
set +e
RINGQUIC_CHURN_CONNS=$conns vg >"$log" 2>&1
rc=$?
set -e
grep -E "churn|test result|definitely lost|no leaks are possible|ERROR SUMMARY" "$log" || true
[ "$rc" = 0 ] || { tail -60 "$log"; fail "valgrind (exit $rc; full log in $log)"; }
grep -qE "definitely lost: 0 bytes|no leaks are possible" "$log" || fail "no leak summary in $log"
grep -q "1 passed" "$log" || fail "the churn test did not pass under valgrind ($log)"
echo "ok: valgrind: definitely lost: 0 bytes"

step "done"
