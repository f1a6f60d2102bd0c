#!/usr/bin/env python3
"""Module import graph of a Rust crate's src/, and a check that it has no circle.

Usage: modgraph.py CRATE_SRC_DIR [--dot]

Reads every .rs file below the directory, resolves each `crate::`, `super::` and `self::` path
(in `use` trees and inline) to the module that defines it, following the crate root's `pub use`
re-exports, and prints one line per module with the modules it uses. Test modules
(`#[cfg(test)] mod ... { }`) are left out: they may reach across layers to build a scenario.
Exits 1 and prints each circle if a module uses, directly or through others, a module that uses
it back.

No crate does this for a Rust source tree without compiling it (cargo-modules needs rust-analyzer's
full toolchain and is slow here), so it is a small text reader: it understands the path syntax this
project uses, not every corner of Rust's.
"""

import os
import re
import sys


def strip_comments(text):
    out = []
    for line in text.splitlines():
        # Drop `//` comments that are not inside a string (good enough: this project does not
        # put `//` in string literals on lines with paths).
        i = line.find("//")
        if i >= 0 and line.count('"', 0, i) % 2 == 0:
            line = line[:i]
        out.append(line)
    return "\n".join(out)


def strip_test_modules(text):
    """Removes `#[cfg(test)]`-gated items whose body is a brace block."""
    result = []
    pos = 0
    pattern = re.compile(r"#\[cfg\((?:test|all\(test[^\]]*\))\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(text, pos)
        if not m:
            result.append(text[pos:])
            break
        result.append(text[pos:m.start()])
        depth = 1
        i = m.end()
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        pos = i
    return "".join(result)


def split_top(s):
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def expand_use_tree(prefix, tree):
    tree = tree.strip()
    if not tree:
        return []
    if tree.startswith("{") and tree.endswith("}"):
        out = []
        for part in split_top(tree[1:-1]):
            out.extend(expand_use_tree(prefix, part))
        return out
    m = re.match(r"^([\w$]+)\s*::\s*(.*)$", tree, re.S)
    if m:
        return expand_use_tree(prefix + [m.group(1)], m.group(2))
    name = re.split(r"\s+as\s+", tree)[0].strip()
    if name == "self":
        return [prefix]
    return [prefix + [name]]


def module_files(src):
    mods = {}
    for root, _dirs, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel in (["lib"], ["main"]):
                rel = []
            elif rel[-1] == "mod":
                rel = rel[:-1]
            mods[tuple(rel)] = path
    return mods


def paths_in(text):
    """Every `crate::`/`super::`/`self::` path in the text, and every path that starts with the
    name of a child module the file declares (`mod seam;` ... `seam::IoBackend`), as lists of
    segments (a child's path is given as `self::child::...`)."""
    found = []
    children = re.findall(r"\bmod\s+(\w+)\s*;", text)
    for child in children:
        for m in re.finditer(r"(?<![\w:])" + child + r"\s*::", text):
            found.append(["self", child])
    for m in re.finditer(r"\buse\s+((?:\$?crate|super|self)\s*::[^;]*);", text, re.S):
        found.extend(expand_use_tree([], m.group(1)))
    inline = re.sub(r"\buse\s+[^;]*;", "", text, flags=re.S)
    for m in re.finditer(r"(?<![\w:])(\$?crate|super|self)((?:\s*::\s*\w+)+)", inline):
        segs = [m.group(1)] + [s for s in re.split(r"\s*::\s*", m.group(2)) if s]
        found.append(segs)
    return found


def resolve(mods, reexports, here, segs, depth=0):
    """The module that defines what `segs` (a path written in module `here`) names. A name a
    module re-exports (`pub use seam::IoBackend;`) resolves to the module that defines it: the
    dependency is on the code, not on the namespace that lends it a shorter name."""
    segs = list(segs)
    if segs[0] in ("crate", "$crate"):
        base = []
        segs = segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    elif tuple(list(here) + [segs[0]]) in mods:
        base = list(here)
    else:
        return None  # another crate
    path = base + segs
    # Longest prefix that names a module.
    for n in range(len(path), -1, -1):
        if tuple(path[:n]) in mods:
            mod = tuple(path[:n])
            if n < len(path) and depth < 8:
                target = reexports.get(mod, {}).get(path[n])
                if target is not None:
                    return target
            return mod
    return None


def collect_reexports(mods, texts):
    raw = {}
    for mod, text in texts.items():
        for m in re.finditer(r"\bpub(?:\s*\([^)]*\))?\s+use\s+([^;]*);", text, re.S):
            for segs in expand_use_tree([], m.group(1)):
                if len(segs) > 1:
                    raw.setdefault(mod, []).append(segs)
    reexports = {}
    # Resolve in rounds so that re-exports of re-exports land on the defining module.
    for _ in range(4):
        for mod, paths in raw.items():
            for segs in paths:
                target = resolve(mods, reexports, mod, segs[:-1])
                if target is None:
                    continue
                final = reexports.get(target, {}).get(segs[-1], target)
                if final != mod:
                    reexports.setdefault(mod, {})[segs[-1]] = final
    return reexports


def main():
    src = sys.argv[1]
    mods = module_files(src)
    texts = {m: strip_test_modules(strip_comments(open(p).read())) for m, p in mods.items()}
    reexports = collect_reexports(mods, texts)
    graph = {}
    for mod, text in texts.items():
        deps = set()
        for segs in paths_in(text):
            target = resolve(mods, reexports, mod, segs)
            if target is None or target == mod or target == ():
                continue
            # A module's own submodules and its parent's declarations are not "uses" of a layer:
            # `mod.rs` declaring `mod uring;` is how a tree is built. Count real paths only.
            deps.add(target)
        graph[mod] = deps

    name = lambda m: "::".join(m) if m else "crate"
    for mod in sorted(graph):
        print(f"{name(mod)} -> {', '.join(sorted(name(d) for d in graph[mod])) or '(nothing)'}")

    # Strongly connected components (Tarjan).
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    real = []
    for comp in sccs:
        comp_set = set(comp)
        real.append((comp, [(a, b) for a in comp for b in graph[a] if b in comp_set]))
    if real:
        for comp, edges in real:
            print("circle: " + " <-> ".join(sorted(name(m) for m in comp)), file=sys.stderr)
            for a, b in sorted(edges):
                print(f"  {name(a)} uses {name(b)}", file=sys.stderr)
        sys.exit(1)
    print("no circle")


if __name__ == "__main__":
    main()
