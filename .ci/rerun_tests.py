#!/usr/bin/env python3
"""Run ringquic's test binaries from the README test command's build again, with other settings.

    python3 .ci/rerun_tests.py [--test NAME ...] [--env VAR=VALUE ...]

`.ci/run` runs the suite a second time on the forced fallback backend (RINGQUIC_BACKEND=poll)
and the differential suite a third time on io_uring. `cargo test -p ringquic` would build
ringquic again first: with `-p` cargo resolves features for that package alone (no
ringquic-perf or ringquic-h3 beside it), so ringquic and part of its dependency tree come out
with other feature sets than in the workspace build and are compiled anew (~3 minutes of CI).
This asks cargo for the workspace build's artifacts instead (`--no-run`, which builds nothing
when the README test command has just run) and runs ringquic's test executables as `cargo test`
would: from the package's directory, one after the other, stopping at nothing, and failing if
any of them failed. Doc tests are not run again (rustdoc would compile each anew): they are
the API's examples and ran in the first pass; the unit and integration tests are what cover a
backend.
"""

import argparse
import os
import subprocess
import sys
import time

from test_binaries import test_executables

PACKAGE = "ringquic"


def ringquic_test_executables(root):
    """(target name, kinds, executable) of PACKAGE's test binaries in the workspace build."""
    cmd = ["cargo", "test", "--workspace", "--all-features", "--no-run"]
    return test_executables(cmd, cwd=root, package_dir=os.path.join(root, PACKAGE))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", action="append", default=[], help="only this integration test")
    ap.add_argument("--env", action="append", default=[], help="VAR=VALUE for the tests")
    args = ap.parse_args()
    root = os.path.realpath(os.path.join(os.path.dirname(__file__), ".."))
    env = dict(os.environ)
    for kv in args.env:
        var, sep, value = kv.partition("=")
        if not sep:
            sys.exit(f"--env {kv}: expected VAR=VALUE")
        env[var] = value

    exes = ringquic_test_executables(root)
    if args.test:
        exes = [e for e in exes if e[0] in args.test and "test" in e[1]]
        missing = set(args.test) - {e[0] for e in exes}
        if missing:
            sys.exit(f"no test binary named {', '.join(sorted(missing))} in the workspace build")
    if not exes:
        sys.exit(f"no test executables of {PACKAGE} in the workspace build")

    failed = []
    for name, kind, exe in exes:
        label = f"{name} ({'lib unit tests' if 'lib' in kind else 'tests'})"
        print(f"\n--- {label}: {os.path.relpath(exe, root)}", flush=True)
        start = time.monotonic()
        rc = subprocess.run([exe], cwd=os.path.join(root, PACKAGE), env=env).returncode
        print(f"--- {label}: exit {rc} in {time.monotonic() - start:.0f}s", flush=True)
        if rc != 0:
            failed.append(label)
    print(f"\n{len(exes) - len(failed)} of {len(exes)} test binaries passed", flush=True)
    if failed:
        print("FAILED: " + ", ".join(failed))
        sys.exit(1)


if __name__ == "__main__":
    main()
