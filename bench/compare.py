#!/usr/bin/env python3
"""Aggregates the JSON lines of bench/compare.sh into the go-kit vs sdkit ratio table.

    compare.py RESULTS.jsonl [--docs docs/BENCHMARKS.md --header-file FILE]

Every (impl, scenario, n, threads) measurement appears once per round; the table shows the
median over the rounds and, per side, the range (min–max) over the rounds.

The "better" column (see verdict()): a side is ahead when it wins in every round (the
rounds are interleaved, go-kit then sdkit, so round i of one side is paired with round i
of the other), or when the two sides' ranges do not overlap; a tie when the median ratio is
within ±5 %; otherwise the rounds disagree, and the column says which side most rounds
favour with the median ratio, without calling it a win. Bold only for a clear result on a
like-for-like row: a row that compares another API of ours (LocalRoundRobin) is never bold.
When the `updatescale` sweep ran, a second table follows: the cost of one update per N, and
that cost divided by N (see scale_table()). With --docs,
the table replaces the text between the markers
<!-- gokit-compare:begin --> and <!-- gokit-compare:end --> in that file.
"""

import json
import statistics
import sys

BEGIN = "<!-- gokit-compare:begin -->"
END = "<!-- gokit-compare:end -->"

# (scenario, metric, label, kind[, like_for_like]) in table order; label gets n/threads
# filled in. A scenario "ours:theirs" compares our scenario `ours` with go-kit's `theirs`.
# like_for_like (default True) is False for rows comparing another API of ours with
# go-kit's: they are shown for what that design buys, and never bold.
ROWS = [
    ("pick", "ns_per_op",
     "pick, round robin as users call it (ours: `RoundRobin::new` + `pick`, a rotation per "
     "thread, the endpoint borrowed; go-kit: `lb.NewRoundRobin`, a shared counter), N={n}, "
     "{threads} thread{s}: ns/pick", "time"),
    ("pick_strict:pick", "ns_per_op",
     "pick, strict round robin, one shared counter on both sides (ours: `RoundRobin::strict`), "
     "N={n}, {threads} thread{s}: ns/pick", "time"),
    ("pick_local:pick", "ns_per_op",
     "pick, ours `LocalRoundRobin` (a handle per thread, returns a reference: not like for "
     "like) vs go-kit's round robin, N={n}, {threads} thread{s}", "time", False),
    ("pick", "allocs_per_op", "pick: allocations/pick (largest median over N and threads)",
     "allocs-all"),
    ("random", "ns_per_op", "pick, random (`lb.NewRandom` / `Random`), N={n}, 1 thread", "time"),
    ("retry", "ns_per_op", "retry (3 attempts, 1 s timeout) over round robin, first attempt succeeds: ns/call", "time"),
    ("retry", "allocs_per_op", "retry, first attempt succeeds: allocations/call", "allocs"),
    ("retry_one_down", "ns_per_op", "retry, one of 2 endpoints down (1.5 attempts a call): ns/call", "time"),
    ("retry_one_down", "allocs_per_op", "retry, one of 2 endpoints down: allocations/call", "allocs"),
    ("update", "ns_per_op", "update, endpointer step only (one step of the whole path below): "
     "one change in {n}", "time"),
    ("update", "allocs_per_op", "update, endpointer step only: allocations per update ({n})",
     "allocs"),
    ("update_path", "p50_ns", "update, whole path: one change in {n}, registry answer → endpointer, p50", "time"),
    ("update_path", "p99_ns", "update, whole path: one change in {n}, registry answer → endpointer, p99", "time"),
    ("update_path", "allocs_per_op", "update, whole path: allocations per update ({n})", "allocs"),
    ("fanout", "p50_ns", "fan-out: {n} instances to {threads} subscribers, p50", "time"),
    ("fanout", "p99_ns", "fan-out: {n} instances to {threads} subscribers, p99", "time"),
    ("fanout", "allocs_per_op", "fan-out: allocations per publish ({n} instances)", "allocs"),
    ("update_scale", "ns_per_op", "update sweep (`updatescale`), endpointer step only: one change in {n}", "time"),
    ("update_scale", "allocs_per_op", "update sweep, endpointer step only: allocations per update ({n})", "allocs"),
    ("update_path_scale", "p50_ns", "update sweep, whole path: one change in {n}, registry answer → endpointer, p50", "time"),
    ("update_path_scale", "p99_ns", "update sweep, whole path: one change in {n}, p99", "time"),
    ("update_path_scale", "allocs_per_op", "update sweep, whole path: allocations per update ({n})", "allocs"),
    ("consul", "p50_ns", "Consul: register/deregister → endpointer, p50", "time"),
    ("consul", "p99_ns", "Consul: register/deregister → endpointer, p99", "time"),
    ("consul", "request_p50_ns", "Consul: the agent request alone (part of the above), p50", "time"),
    ("consul_request", "p50_ns", "Consul agent request alone (`consulreq`: register/deregister PUT, no watch; ours through `ConsulRegistrar`, go-kit's `consul.Client`), p50", "time"),
    ("consul_request", "p99_ns", "Consul agent request alone (`consulreq`), p99", "time"),
    ("consul_request_client:consul_request", "p50_ns", "Consul agent request alone, ours through `sd_consul::Client` (no registrar) vs go-kit's `consul.Client`, p50", "time"),
    ("consul_request_raw", "p50_ns", "Consul agent request alone, a bare HTTP client (reqwest / net/http), p50", "time"),
    ("consul_request", "cpu_ns_per_op", "Consul agent request alone: CPU time of the client process per request (all threads; `ConsulRegistrar` / `consul.Client`)", "time"),
    ("consul_request_client:consul_request", "cpu_ns_per_op", "Consul agent request alone: CPU time per request, ours through `sd_consul::Client`", "time"),
    ("consul_request_raw", "cpu_ns_per_op", "Consul agent request alone: CPU time per request, bare HTTP client", "time"),
    ("consul_request", "slices_per_op", "Consul agent request alone: thread wake-ups per request in the client process (`ConsulRegistrar` / `consul.Client`)", "allocs"),
    ("consul_request_raw", "slices_per_op", "Consul agent request alone: thread wake-ups per request, bare HTTP client", "allocs"),
    ("zk", "p50_ns", "ZooKeeper: node created/deleted → endpointer, p50 (ours through `ZkRegistrar`, go-kit's through a plain connection: its registrar cannot deregister, ZK-6)", "time"),
    ("zk", "p99_ns", "ZooKeeper: node created/deleted → endpointer, p99", "time"),
    ("zk", "request_p50_ns", "ZooKeeper: the create/delete call alone (part of the above; ours also sets a watch on the node), p50", "time"),
    ("etcd", "p50_ns", "etcd 3.4: register/deregister → endpointer, p50 (both through their registrar and instancer; go-kit re-reads the prefix on each event)", "time"),
    ("etcd", "p99_ns", "etcd 3.4: register/deregister → endpointer, p99", "time"),
    ("etcd", "request_p50_ns", "etcd: the registrar call alone (lease grant + put, or delete; part of the above), p50", "time"),
    ("dns", "p50_ns", "DNS SRV (BIND, refresh 200 ms both sides): nsupdate change → endpointer, p50", "time"),
    ("dns", "p99_ns", "DNS SRV (BIND, refresh 200 ms both sides): nsupdate change → endpointer, p99", "time"),
    ("dns", "request_p50_ns", "DNS SRV: the nsupdate run alone (part of the above), p50", "time"),
    ("eureka", "p50_ns", "Eureka, poll 1 s: register/deregister → endpointer, p50", "time"),
    ("eureka", "p99_ns", "Eureka, poll 1 s: register/deregister → endpointer, p99", "time"),
    ("eureka", "request_p50_ns", "Eureka: the server request alone (part of the above), p50", "time"),
    ("memory", "bytes_per_instance", "memory: resident bytes/instance, {n} instances", "bytes"),
    ("memory", "heap_bytes_per_instance", "memory: heap bytes/instance, {n} instances", "bytes"),
]
# Scale (scale.rs / scale.go): {n} services × 20 instances, an instancer + endpointer each,
# all on one client.
# "etcd_scale_shared" is ours only: a bench prototype of one watch shared by every instancer.
for _scen, _name, _lfl in (
        ("consul_scale", "Consul", True), ("etcd_scale", "etcd 3.4", True),
        ("etcd_scale_shared:etcd_scale", "etcd 3.4 (ours: one shared prefix watch, a bench "
         "prototype; go-kit: a watch per instancer)", False)):
    _what = f"{_name} scale, {{n}} services × 20 instances watched at once"
    ROWS += [r + (_lfl,) for r in [
        (_scen, "rss_bytes", f"{_what}: resident memory after freeing (Go: GC + FreeOSMemory; ours: malloc_trim)", "mb"),
        (_scen, "rss_raw_bytes", f"{_what}: resident memory as is", "mb"),
        (_scen, "heap_bytes", f"{_what}: live heap (Go: HeapAlloc, goroutine stacks not counted)", "mb"),
        (_scen, "cpu_ms_per_s", f"{_what}: CPU at rest (user + sys)", "cpu"),
        (_scen, "start_ns", f"{_what}: time to start them all until every endpointer serves its 20", "time"),
        (_scen, "p50_ns", f"{_what}: one service changed (an instance added or removed) → its endpointer, p50", "time"),
        (_scen, "p99_ns", f"{_what}: one service changed → its endpointer, p99", "time"),
        (_scen, "request_p50_ns", f"{_what}: the registry write alone (part of the above), p50", "time"),
        (_scen, "sockets", f"{_what}: sockets open at rest", "count"),
    ]]


def fmt(v, kind):
    if v is None:
        return "—"
    if kind == "time":
        if v >= 1e6:
            return f"{v / 1e6:.2f} ms"
        if v >= 1e3:
            return f"{v / 1e3:.1f} µs"
        return f"{v:.1f} ns"
    if kind == "mb":
        return f"{v / 1e6:.1f} MB"
    if kind == "cpu":
        return f"{v:.3f} ms/s"
    if kind == "count":
        return f"{v:.0f}"
    if kind == "allocs":
        return "0" if v < 0.005 else f"{v:.2f}" if v < 10 else f"{v:.0f}"
    return f"{v:.0f} B"


def spread(vals, kind):
    """The range over the rounds, min–max."""
    if len(vals) < 2:
        return "—"
    lo, hi = fmt(min(vals), kind), fmt(max(vals), kind)
    if lo == hi:
        return "same"
    if " " in lo and lo.split(" ")[1] == hi.split(" ")[1]:
        lo = lo.split(" ")[0]  # 8.6–10.3 ns
    return f"{lo}–{hi}"


def verdict(g, s, like_for_like=True):
    """The "better" column for go-kit's figures `g` and ours `s` (lower is better), one per
    round in round order. Returns (ratio text, verdict text)."""
    gm, sm = statistics.median(g), statistics.median(s)
    if gm < 0.005 and sm < 0.005:
        return "—", "tie"
    if sm < 0.005 or gm < 0.005:
        return "—", "sdkit" if sm < gm else "go-kit"
    r = gm / sm
    winner, factor = ("sdkit", r) if r > 1 else ("go-kit", 1 / r)
    if len(g) == len(s):
        rounds = list(zip(g, s))
        ours = sum(1 for a, b in rounds if b < a)
        theirs = sum(1 for a, b in rounds if a < b)
    else:  # a round failed on one side: no pairing, only the ranges
        ours = theirs = None
    separate = min(g) > max(s) or min(s) > max(g)
    consistent = (ours == len(g) and r > 1) or (theirs == len(g) and r < 1)
    if 0.95 <= r <= 1.05:
        return f"{r:.2f}", "tie (±5%)"
    if separate or consistent:
        why = "" if separate else " (every round)"
        name = f"**{winner}**" if like_for_like else winner
        return f"{r:.2f}", f"{name} ahead {factor:.1f}×{why}"
    if ours is None:
        return f"{r:.2f}", f"unclear: ranges overlap, median {winner} {factor:.1f}×"
    most = max(ours, theirs)
    side = "sdkit" if ours > theirs else "go-kit" if theirs > ours else "neither"
    return f"{r:.2f}", (f"unclear: {side} in {most} of {len(g)} rounds, "
                        f"median {winner} {factor:.1f}×")


def load(path):
    data, skipped = {}, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if r.get("skipped"):
                item = (r["impl"], r["scenario"], r["skipped"])
                if item not in skipped:
                    skipped.append(item)
                continue
            key = (r["scenario"], r["n"], r["threads"])
            for metric, v in r.items():
                if isinstance(v, (int, float)) and metric not in ("n", "threads", "ops"):
                    data.setdefault(key, {}).setdefault(metric, {}).setdefault(r["impl"], []).append(v)
    return data, skipped


def table(data, skipped):
    out = [
        "| scenario | go-kit | sdkit | go-kit ÷ sdkit | better | range over the rounds: go-kit / sdkit |",
        "|---|---|---|---|---|---|",
    ]
    keys = sorted(data.keys(), key=lambda k: (k[1], k[2]))
    rounds = 0
    for scenario, metric, label, kind, *rest in ROWS:
        like_for_like = rest[0] if rest else True
        ours, _, theirs = scenario.partition(":")
        theirs = theirs or ours
        if kind == "allocs-all":
            # One row for every configuration of the scenario: the largest median per side.
            meds = {"gokit": [], "sdkit": []}
            for key in keys:
                if key[0] == ours and metric in data[key]:
                    for impl, vals in data[key][metric].items():
                        meds.setdefault(impl, []).append(statistics.median(vals))
            if meds["gokit"] or meds["sdkit"]:
                g = max(meds["gokit"]) if meds["gokit"] else None
                sv = max(meds["sdkit"]) if meds["sdkit"] else None
                better = "tie" if (g or 0) < 0.005 and (sv or 0) < 0.005 else "—"
                out.append(f"| {label} | {fmt(g, 'allocs')} | {fmt(sv, 'allocs')} | — | {better} | |")
            continue
        for key in keys:
            if key[0] != ours or metric not in data[key]:
                continue
            s = data[key][metric].get("sdkit", [])
            g = data.get((theirs,) + key[1:], {}).get(metric, {}).get("gokit", [])
            rounds = max(rounds, len(g), len(s))
            gm = statistics.median(g) if g else None
            sm = statistics.median(s) if s else None
            ratio, better = "—", "—"
            if gm is not None and sm is not None:
                ratio, better = verdict(g, s, like_for_like)
            name = label.format(n=f"{key[1]:,}".replace(",", " "), threads=key[2],
                                s="" if key[2] == 1 else "s")
            out.append(f"| {name} | {fmt(gm, kind)} | {fmt(sm, kind)} | {ratio} | {better} | "
                       f"{spread(g, kind)} / {spread(s, kind)} |")
    for impl, scenario, why in skipped:
        side = "go-kit" if impl == "gokit" else impl
        out.append(f"| {scenario}: skipped or failed ({side}) | | | | | {why} |")
    return "\n".join(out), rounds


def scale_table(data):
    """The cost of one update as N grows (the `updatescale` sweep): per N, the medians of the
    whole path (p50) and of the endpointer step, and each divided by N (ns per instance: a
    flat column is linear growth). Empty when the sweep was not run."""
    ns = sorted(n for (sc, n, _t) in data if sc == "update_path_scale")
    if not ns:
        return ""

    def med(scenario, n, metric, impl):
        vals = data.get((scenario, n, 1), {}).get(metric, {}).get(impl, [])
        return statistics.median(vals) if vals else None

    def per(v, n):
        return "—" if v is None else f"{v / n:,.1f} ns".replace(",", " ")

    out = [
        "| N | whole path p50: go-kit | sdkit | per instance: go-kit | sdkit "
        "| endpointer step: go-kit | sdkit | per instance: go-kit | sdkit "
        "| allocations per instance (whole path): go-kit | sdkit |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in ns:
        pg, ps = (med("update_path_scale", n, "p50_ns", i) for i in ("gokit", "sdkit"))
        sg, ss = (med("update_scale", n, "ns_per_op", i) for i in ("gokit", "sdkit"))
        ag, as_ = (med("update_path_scale", n, "allocs_per_op", i) for i in ("gokit", "sdkit"))
        alloc = lambda v: "—" if v is None else f"{v / n:.2f}"
        out.append(f"| {n:,} | {fmt(pg, 'time')} | {fmt(ps, 'time')} | {per(pg, n)} | {per(ps, n)} "
                   f"| {fmt(sg, 'time')} | {fmt(ss, 'time')} | {per(sg, n)} | {per(ss, n)} "
                   f"| {alloc(ag)} | {alloc(as_)} |".replace(",", " "))
    return "\n".join(out)


def main():
    args = sys.argv[1:]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    data, skipped = load(args[0])
    text, rounds = table(data, skipped)
    print(text)
    print(f"\n(median of {rounds} rounds per side; the last column is min–max over the rounds)")
    scale = scale_table(data)
    if scale:
        print("\nCost of one update as N grows (`updatescale`; medians; per instance = time ÷ N):\n")
        print(scale)
    if "--docs" in args:
        docs = args[args.index("--docs") + 1]
        header = ""
        if "--header-file" in args:
            with open(args[args.index("--header-file") + 1]) as f:
                header = f.read().rstrip() + "\n\n"
        with open(docs) as f:
            content = f.read()
        if BEGIN not in content or END not in content:
            print(f"{docs}: markers {BEGIN} / {END} not found; not written", file=sys.stderr)
            return 1
        before, rest = content.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        block = (f"{BEGIN}\n{header}{text}\n\nMedian of {rounds} rounds per side; the last column "
                 f"is the lowest and highest figure over the rounds.\n{END}")
        with open(docs, "w") as f:
            f.write(before + block + after)
        print(f"wrote the table into {docs}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
