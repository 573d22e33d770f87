#!/usr/bin/env python3
"""Where a program's instructions went, from a callgrind profile: self cost per callback grouped
by the code that ran it (a demangled Rust path names its crate; the first group that matches
wins, so an inlined function counts where it was inlined), then the costliest functions.
Usage: bench/profile.py PROFILE CALLBACKS [NAME] [TOP, 20]"""
import re
import sys

GROUPS = [
    ("own code (hookbus, or the legs' own)", r"\bhookbus::|\blegs::"),
    ("HTTP (hyper, http, httparse)", r"\bhyper(_util)?::|\bhttp::|\bhttparse::|\bhttp_body(_util)?::"),
    ("JSON, digests, ids, time text (serde, sha2, uuid, humantime)",
     r"\bserde(_json)?::|\bsha2::|\bhmac::|\buuid::|\bhumantime::|\bform_urlencoded::|\bpercent_encoding::"),
    ("NATS client (async-nats, nuid)", r"\basync_nats::|\bnuid::"),
    ("AMQP client (lapin, amq-protocol, pinky-swear, flume)",
     r"\blapin::|\bamq_protocol\w*::|\bpinky_swear::|\bflume::|\bexecutor_trait::|\breactor_trait::|\basync_rs::"),
    ("Kafka client (rdkafka, librdkafka)", r"\brdkafka\w*::|\brd_|^rd_|\blz4|\bzstd|\bcrc32c"),
    ("runtime (tokio, futures)", r"\btokio::|\bfutures_\w+::|\bmio::|\bparking_lot\w*::"),
    ("allocator (mimalloc)", r"\bmi_|mimalloc|_mi_"),
    ("copies, hashing and strings (std, core, alloc, libc)",
     r"\bmem(cpy|move|set|cmp|chr)|\bstr(len|cmp|chr)|\bcore::|\balloc::|\bstd::|\bhashbrown::|\bbytes::"),
]


def self_costs(path):
    """Each function's own instructions in a callgrind profile: the cost lines under its `fn=`,
    less the lines that follow a `calls=` (those are the callee's inclusive cost)."""
    names, costs, fn, callee = {}, {}, None, False
    for line in open(path, errors="replace"):
        if line.startswith(("fn=", "cfn=")):
            m = re.match(r"c?fn=\((\d+)\)(?: (.*))?", line.rstrip("\n"))
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                if line.startswith("fn="):
                    fn = names.get(m.group(1))
        elif line.startswith("calls="):
            callee = True
        elif line[:1].isdigit() or line[:1] in "+-*":
            parts = line.split()
            if not callee and fn and len(parts) >= 2:
                costs[fn] = costs.get(fn, 0) + int(parts[1])
            callee = False
    return costs


def groups(costs, patterns=GROUPS):
    sums = {name: 0 for name, _ in patterns + [("everything else", "")]}
    for symbol, cost in costs.items():
        group = next((name for name, pattern in patterns if re.search(pattern, symbol)), "everything else")
        sums[group] += cost
    return sums


def report(path, callbacks, name, top=20, patterns=GROUPS):
    """Prints where the profile's instructions went, by group (`patterns`: name and regular
    expression, first match wins), and its costliest functions."""
    costs = self_costs(path)
    total = sum(costs.values())
    print(f"Where {name}'s instructions went (self cost per callback, {callbacks:,} callbacks):\n")
    print("| code | instructions per callback | share |")
    print("|---|---|---|")
    for group, cost in groups(costs, patterns).items():
        print(f"| {group} | {cost / callbacks:,.0f} | {100 * cost / max(total, 1):.1f} % |")
    print(f"\nCostliest functions of {name} (self, per callback):\n")
    for symbol, cost in sorted(costs.items(), key=lambda item: -item[1])[:top]:
        print(f"- {cost / callbacks:,.0f} {symbol[:140]}")


def compare(path, callbacks, legs_path, legs_callbacks, name, top=15, patterns=GROUPS):
    """Where a program's instructions went beside its legs' (`legs_path`), per callback: by group,
    then the functions whose self cost differs the most: which part holds the difference."""
    mine, legs = self_costs(path), self_costs(legs_path)
    per = lambda costs, n, key: costs.get(key, 0) / n
    print(f"Where {name}'s instructions went beside its legs' (self cost per callback, {callbacks:,} and "
          f"{legs_callbacks:,} callbacks):\n")
    print("| code | legs | gateway | more |")
    print("|---|---|---|---|")
    theirs = groups(legs, patterns)
    for group, cost in groups(mine, patterns).items():
        a, b = theirs[group] / legs_callbacks, cost / callbacks
        print(f"| {group} | {a:,.0f} | {b:,.0f} | {b - a:+,.0f} |")
    a, b = sum(legs.values()) / legs_callbacks, sum(mine.values()) / callbacks
    print(f"| total | {a:,.0f} | {b:,.0f} | {b - a:+,.0f} |")
    print(f"\nFunctions whose self cost per callback differs the most (gateway − legs):\n")
    diff = {key: per(mine, callbacks, key) - per(legs, legs_callbacks, key) for key in set(mine) | set(legs)}
    for symbol, more in sorted(diff.items(), key=lambda item: -abs(item[1]))[:top]:
        print(f"- {more:+,.0f} {symbol[:140]}")


if __name__ == "__main__":
    report(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else sys.argv[1],
           int(sys.argv[4]) if len(sys.argv) > 4 else 20)
