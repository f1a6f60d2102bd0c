#!/usr/bin/env python3
"""Bucket a `perf record` profile by where the time went, per thread and overall.

Usage: perf_buckets.py perf.data

The buckets used in docs/PERFORMANCE.md: kernel (any [kernel.kallsyms] symbol), crypto (ring's
AES-GCM/GHASH/ChaCha and rustls' packet keys), memcpy/memmove, quinn-proto, malloc, tokio,
quinn + quinn-udp, ringquic, locks, other. It only reads `perf script` output.
"""
import collections
import re
import subprocess
import sys


# First match wins: (bucket, pattern searched in the symbol name).
BUCKETS = [
    ("crypto", r"ring_core|aes|gcm|ghash|ring::aead|HeaderProtection|chacha"),
    ("memcpy", r"memmove|memcpy|memset"),
    ("quinn-proto", r"quinn_proto"),
    ("malloc", r"malloc|free|realloc|_int_"),
    ("tokio", r"tokio"),
    ("quinn+quinn-udp", r"^<?quinn::|quinn_udp"),
    ("ringquic", r"ringquic"),
    ("locks", r"futex|Mutex|lock"),
]


def bucket(sym: str, dso: str) -> str:
    if "kernel" in dso:
        return "kernel"
    for name, pattern in BUCKETS:
        if re.search(pattern, sym):
            return name
    return "other"


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = subprocess.run(
        ["perf", "script", "-i", sys.argv[1], "-F", "comm,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout
    per = collections.Counter()
    threads = collections.Counter()
    for line in out.splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        comm, _ip, rest = parts
        m = re.match(r"(.*) \((.*)\)$", rest)
        sym, dso = (m.group(1), m.group(2)) if m else (rest, "")
        per[(comm, bucket(sym, dso))] += 1
        threads[comm] += 1
    total = sum(threads.values()) or 1
    for comm, n in threads.most_common():
        print(f"{comm}: {n / total * 100:.1f}% of samples")
        for (c, b), k in per.most_common():
            if c == comm:
                print(f"   {b:16s} {k / n * 100:5.1f}%")
    overall = collections.Counter()
    for (_, b), k in per.items():
        overall[b] += k
    print("all threads:")
    for b, k in overall.most_common():
        print(f"   {b:16s} {k / total * 100:5.1f}%  ({k} samples)")


if __name__ == "__main__":
    main()
