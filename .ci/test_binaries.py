#!/usr/bin/env python3
"""The test executables a `cargo test --no-run` command builds, from cargo's JSON messages.

    python3 .ci/test_binaries.py [--package-dir DIR] -- CARGO-COMMAND...

Runs CARGO-COMMAND with `--message-format=json` added (cargo's own output goes to stderr) and
prints the path of each test executable it built, one per line, sorted: the artifacts whose
profile is a test profile (`cargo test` also builds the examples, which are programs, not
tests), only of the package whose Cargo.toml is in DIR if one is given (a directory, not a
name: the porting check's crate under porting/ is called ringquic too). Fails if the command
fails or built none.

The one reader of cargo's artifact messages for CI: `.ci/rerun_tests.py` (the poll and uring
passes), `.ci/reliability.sh` (the LeakSanitizer and valgrind churn binaries) and
`.ci/windows.sh` (the binaries Wine runs) all find their executables with it.
"""

import argparse
import json
import os
import subprocess
import sys


def test_executables(cmd, cwd=None, package_dir=None):
    """(target name, target kinds, executable) of the test binaries `cmd` builds (run in `cwd`),
    of the package in `package_dir` only, if given."""
    out = subprocess.run(
        list(cmd) + ["--message-format=json"], cwd=cwd, check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    found = set()
    for line in out.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
            continue
        if not msg["profile"]["test"]:
            continue  # examples and binaries: programs, not tests
        manifest_dir = os.path.realpath(os.path.dirname(msg.get("manifest_path", "")))
        if package_dir is not None and manifest_dir != os.path.realpath(package_dir):
            continue
        found.add((msg["target"]["name"], tuple(msg["target"]["kind"]), msg["executable"]))
    return sorted(found)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package-dir", help="only the test binaries of the package in this directory")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the cargo command")
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        sys.exit("usage: test_binaries.py [--package-dir DIR] -- CARGO-COMMAND...")
    try:
        exes = test_executables(cmd, package_dir=args.package_dir)
    except subprocess.CalledProcessError as e:
        sys.exit(f"{' '.join(cmd)}: exit {e.returncode}")
    if not exes:
        sys.exit(f"no test executables in the output of {' '.join(cmd)}")
    for exe in exes:
        print(exe[2])


if __name__ == "__main__":
    main()
