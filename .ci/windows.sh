#!/usr/bin/env bash
# Windows CI for ringquic, run on Linux (see docs/WINDOWS.md):
#
#   1. build check: `cargo clippy -D warnings` of the whole workspace (tests included; every
#      feature but the aws-lc-rs crypto provider, see below) for
#      x86_64-pc-windows-gnu, which type-checks everything `cargo check` would (a separate
#      check ran the same compiler over the workspace twice). A failure here fails CI.
#   2. Wine: build the ringquic test binaries for Windows, run them under wine64 (with a stand-in
#      bcryptprimitives.dll, ci/wine/) and print which binaries ran and their summaries. This
#      fails CI only if a test fails that is expected to pass under Wine (see EXPECTED below).
#
# Where the target, MinGW or Wine cannot be installed, it prints one `SKIPPED: ...` line for
# that part and exits 0. Needs no network when everything is installed and cached.
set -uo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-pc-windows-gnu
WINE_TIMEOUT=600 # per test binary
BUDGET=420       # seconds for the whole Wine part; later binaries get what is left
step() { printf '\n=== windows: %s (%ss)\n' "$*" "$SECONDS"; }

# Install Debian packages if we can (root or passwordless sudo, apt-get present).
apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null || return 1
    sudo="sudo -n"
  fi
  { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@"; } \
    >"${TMPDIR:-/tmp}/ringquic-apt.log" 2>&1
}

# ─── 1. build check ──────────────────────────────────────────────────────────────────────
step "toolchain"
if ! command -v rustup >/dev/null 2>&1; then
  echo "SKIPPED: Windows CI: rustup is not installed, so the $TARGET target cannot be added"
  exit 0
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  if ! rustup target add "$TARGET" >/dev/null 2>&1; then
    echo "SKIPPED: Windows CI: could not install the $TARGET Rust target on this machine"
    exit 0
  fi
fi
# The `ring` crate compiles C code, so even a check build needs the MinGW C compiler.
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  apt_install gcc-mingw-w64-x86-64 || true
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
  echo "SKIPPED: Windows CI: could not install MinGW gcc (Debian package gcc-mingw-w64-x86-64)"
  exit 0
fi

# Every feature of every workspace crate but ringquic's `rustls-aws-lc-rs`: that one only
# selects rustls' aws-lc-rs provider (no Windows-specific code of ours), and cross-compiling
# aws-lc's C for MinGW was ~115 s of CPU in each Windows build. The Linux builds keep it.
features() { # [package]: the list for --features, of that package only if one is named
  cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
only = sys.argv[1] if len(sys.argv) > 1 else None
m = json.load(sys.stdin)
print(",".join(p["name"] + "/" + f for p in m["packages"] if only in (None, p["name"])
               for f in sorted(p["features"]) if f not in ("default", "rustls-aws-lc-rs")))' "$@"
}
WS_FEATURES=$(features) || exit 1
RQ_FEATURES=$(features ringquic) || exit 1
echo "features: $WS_FEATURES"

step "cargo clippy --workspace --all-targets --features <all but rustls-aws-lc-rs> --target $TARGET -- -D warnings"
cargo clippy --workspace --all-targets --features "$WS_FEATURES" --target "$TARGET" -- -D warnings || exit 1

# ─── 2. Wine ─────────────────────────────────────────────────────────────────────────────
step "Wine"
find_wine() {
  WINE=$(command -v wine64 2>/dev/null || true)
  [ -z "$WINE" ] && [ -x /usr/lib/wine/wine64 ] && WINE=/usr/lib/wine/wine64
  WINESERVER=$(command -v wineserver 2>/dev/null || true)
  [ -z "$WINESERVER" ] && [ -x /usr/lib/wine/wineserver ] && WINESERVER=/usr/lib/wine/wineserver
  [ -n "$WINE" ]
}
if ! find_wine; then
  apt_install wine64 || true
fi
if ! find_wine; then
  echo "SKIPPED: Windows test run: could not install Wine (Debian package wine64)"
  exit 0
fi
"$WINE" --version 2>/dev/null | head -1

step "build the ringquic test binaries for Windows"
work="target/$TARGET/wine-ci"
mkdir -p "$work"
# Test binaries only: `cargo test` also builds the examples, which are programs, not tests
# (tests/suite/examples.rs runs them itself).
python3 .ci/test_binaries.py --package-dir ringquic -- cargo test -p ringquic --features "$RQ_FEATURES" \
  --target "$TARGET" --no-run >"$work/exes.txt" 2>"$work/build.log" || { tail -30 "$work/build.log"; exit 1; }
mapfile -t exes <"$work/exes.txt"

# Rust's std imports ProcessPrng from bcryptprimitives.dll, which Wine 8 lacks: put a stand-in
# beside the executables (they all live in the same deps directory).
dll_dir=$(dirname "${exes[0]}")
x86_64-w64-mingw32-gcc -shared -O2 -s -o "$dll_dir/bcryptprimitives.dll" \
  ci/wine/bcryptprimitives.c ci/wine/bcryptprimitives.def -ladvapi32 || exit 1

export WINEPREFIX="$PWD/target/wine-prefix"
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree=;mshtml=" # no Mono/Gecko install dialogs
export RUST_BACKTRACE=0
unset DISPLAY

# Tests expected to fail under Wine 8, and why. Any other failure fails CI.
#  * a_receive_flood_larger_than_the_buffer_pool (robust_exhaustion): 30 000 datagrams blasted
#    at an endpoint with four 2 KiB receive buffers. Under Wine the poll backend runs in its
#    plain mode (one recvfrom per datagram through wineserver) and the flood starves the real
#    connection until it idles out; on Linux both backends pass it.
EXPECTED_ALWAYS="robust_exhaustion::a_receive_flood_larger_than_the_buffer_pool"
#  * When the poll backend cannot be created under this Wine (Wine 8 has no IP_RECVECN /
#    IPV6_RECVECN, which quinn-udp's UdpSocketState::new requires, and answers WSAEOPNOTSUPP to
#    IPV6_V6ONLY on an IPv4 socket), no endpoint can run: the poll backend's own tests, the one
#    driver test that starts a real endpoint, and every integration test fail. Detected by the
#    gate test below, so a Wine that can run the fallback makes all of them mandatory.
GATE="io::poll::tests::tx_pool_exhaustion"
EXPECTED_WITHOUT_FALLBACK_PREFIX="io::poll::tests:: driver::tests::panic_on_the_io_thread_fails_pending_futures"

is_expected() { # test-name fallback_ok
  local t=$1 p
  for p in $EXPECTED_ALWAYS; do [ "$t" = "$p" ] && return 0; done
  if [ "$2" = 0 ]; then
    for p in $EXPECTED_WITHOUT_FALLBACK_PREFIX; do [[ "$t" == "$p"* ]] && return 0; done
  fi
  return 1
}

# Run one binary; sets RC, writes the log. $1 = exe.
run_exe() {
  local exe=$1 left=$((BUDGET - (SECONDS - wine_start)))
  local limit=$WINE_TIMEOUT
  [ "$left" -lt "$limit" ] && limit=$left
  if [ "$limit" -le 5 ]; then
    RC=125
    echo "(no time left in the ${BUDGET}s Wine budget)" >"$log"
    return
  fi
  (cd "$(dirname "$exe")" && timeout -k 10 "$limit" "$WINE" "./$(basename "$exe")") >"$log" 2>&1
  RC=$?
}

# One wineserver for the whole run. Left to itself it exits a few seconds after each binary, and
# a binary starting just then loses its connection before any test runs ("wine client error:0:
# recvmsg: Connection reset by peer"; seen once in CI on the lifecycle binary).
[ -n "${WINESERVER:-}" ] && "$WINESERVER" -p >/dev/null 2>&1

wine_start=$SECONDS
# The lib unit tests first: they tell whether the fallback backend works under this Wine.
lib_exe=""
others=()
for e in "${exes[@]}"; do
  case "$(basename "$e")" in
    ringquic-*.exe) lib_exe=$e ;;
    *) others+=("$e") ;;
  esac
done

unexpected=()
fallback_ok=0
summary=()
for exe in $lib_exe "${others[@]}"; do
  [ -z "$exe" ] && continue
  name=$(basename "$exe" .exe)
  name=${name%-*}
  [ "$exe" = "$lib_exe" ] && name="ringquic (lib unit tests)"
  log="$work/$(basename "$exe" .exe).log"
  step "wine: $name"
  run_exe "$exe"
  # Wine itself failed before the binary ran a test (its client lost the wineserver): once more.
  if [ "$RC" != 0 ] && ! grep -q '^running ' "$log" && grep -q 'wine client error' "$log"; then
    echo "(Wine failed before any test ran: $(tail -1 "$log"); running it again)"
    run_exe "$exe"
  fi
  result=$(grep -E '^test result:' "$log" | tail -1)
  mapfile -t failed < <(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log")
  if [ "$exe" = "$lib_exe" ] && grep -q "^test $GATE \.\.\. ok$" "$log"; then
    fallback_ok=1
  fi
  case $RC in
    124 | 137) result="TIMED OUT after the time limit; ${result:-no summary}" ;;
    125) result="NOT RUN: ${BUDGET}s Wine budget used up" ;;
  esac
  [ -z "$result" ] && result="no test summary (exit code $RC): $(tail -3 "$log" | tr '\n' ' ')"
  summary+=("$name: $result")
  echo "$result"
  for t in "${failed[@]}"; do
    if is_expected "$t" "$fallback_ok" || { [ "$exe" != "$lib_exe" ] && [ "$fallback_ok" = 0 ]; }; then
      echo "  expected failure under Wine: $t"
    else
      echo "  UNEXPECTED failure: $t"
      unexpected+=("$name: $t")
    fi
  done
  # A crash or a timeout without a FAILED line counts too, unless the binary is report-only.
  if [ "$RC" != 0 ] && [ "${#failed[@]}" = 0 ] && [ "$RC" != 125 ]; then
    if [ "$exe" = "$lib_exe" ] || [ "$fallback_ok" = 1 ]; then
      unexpected+=("$name: exit code $RC without a failed test (crash or timeout)")
      tail -20 "$log"
    fi
  fi
done
[ -n "${WINESERVER:-}" ] && "$WINESERVER" -k >/dev/null 2>&1

step "Wine summary"
echo "$("$WINE" --version 2>/dev/null | head -1) ran ${#summary[@]} test binaries (logs in $work):"
printf '  %s\n' "${summary[@]}"
if [ "$fallback_ok" = 1 ]; then
  echo "The poll backend works under this Wine: integration test failures count."
else
  echo "The poll backend cannot start under this Wine (gate test $GATE failed): integration tests are"
  echo "reported, not required. RIO itself is absent from Wine; it is checked by the compiler and by review."
fi
if [ "${#unexpected[@]}" != 0 ]; then
  echo "UNEXPECTED failures under Wine:"
  printf '  %s\n' "${unexpected[@]}"
  exit 1
fi
echo "No unexpected failures under Wine."
exit 0
