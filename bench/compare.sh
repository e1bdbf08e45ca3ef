#!/usr/bin/env bash
# Side-by-side benchmark: go-kit's sd package (bench/gokit) vs sdkit (bench/rust, sd-compare).
#
#   bench/compare.sh [--rounds N] [--quick] [--write-docs] [--no-build] [--scenarios LIST]
#
# Builds both sides (Go with `go build`; Rust with `cargo build --profile bench`: the release
# profile plus the workspace's lto = true and codegen-units = 1, as for the criterion benches,
# since Go inlines across packages too), runs them interleaved (go-kit, sdkit, go-kit, sdkit,
# ...; N rounds, default 5; memory, the registry scenarios and the scale sweeps in fresh
# processes of their own), then prints a markdown table of the medians with go-kit's figure,
# ours, the ratio and the range over the rounds. --write-docs also puts the table, with the
# date, the machine and this command, into docs/BENCHMARKS.md (section "go-kit comparison").
#
# The ZooKeeper scenario runs against SD_TEST_ZK, or else the server scripts/registries is
# running, like the Consul one; the etcd one likewise against SD_TEST_ETCD (etcd 3.4).
# The Consul scenario runs against the agent at SD_TEST_CONSUL, or else the one
# scripts/registries is running (start it with `scripts/registries up`); without an agent
# both sides print a "skipped" line. The DNS SRV scenario ("dns") likewise uses SD_TEST_DNS
# (BIND), both sides polling every 200 ms and changing the zone with nsupdate. The Eureka
# scenario likewise uses SD_TEST_EUREKA or the running Eureka server; its go-kit side is
# bench/gokit-eureka (a module of its own: fargo), and each round takes about 25 s a side
# (20 changes, polling every second).
# The scale scenarios (issue 17; not in the default list: about 1 min a side each) watch
# 1 000 services × 20 instances at once through the same Consul agent ("consul_scale") or
# etcd server ("etcd_scale"): resident memory, CPU at rest, time to apply a change to one
# service (bench/rust/src/scenarios/scale.rs says how); SD_SCALE_IDLE_S sets the idle
# window (10 s). "etcd_scale_shared" runs ours only, every instancer on sd-etcdv3's shared
# watch of the prefix (watch=shared), and is compared with go-kit's etcd_scale.
# "consulreq" (default) times the Consul agent request alone against the same agent, under
# the same lock: 1 000 register/deregister pairs per client (ours through ConsulRegistrar,
# sd_consul::Client and a bare reqwest client; go-kit's consul.Client and a bare net/http
# client), with the client's CPU time and thread wake-ups per request; about 5 s a side.
# Not in the default list, for the time they take (go-kit about 15-45 s a round and up to
# 190 MB resident at N = 100 000; sdkit about 8 s): "updatescale", the cost of one update
# (endpointer step and whole path) at N = 10, 100, 1 000, 10 000 and 100 000, with a
# "cost vs N" table (time ÷ N per instance) printed under the main one; "fanoutscale", the
# fan-out at 10 000 instances (100 subscribers). Add them with --scenarios, e.g.
# --scenarios updatescale,fanoutscale.
# Raw JSON lines are kept in target/bench-compare/. A full run takes about a minute, plus
# about 4 min for Eureka (longer
# if it has to wait for another suite's fault test to give the Consul agent back).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROUNDS=5
QUICK=""
WRITE_DOCS=""
BUILD=1
SCENARIOS="pick,random,retry,update,fanout,consul,consulreq,zk,etcd,dns,eureka,memory"
COMMAND="bench/compare.sh $*"

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS="$2"; shift 2 ;;
        --quick) QUICK="-quick"; shift ;;
        --write-docs) WRITE_DOCS=1; shift ;;
        --no-build) BUILD=""; shift ;;
        --scenarios) SCENARIOS="$2"; shift 2 ;;
        -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$ROUNDS" in ''|*[!0-9]*|0) echo "compare.sh: --rounds needs a positive number" >&2; exit 2 ;; esac

TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$TARGET/bench-compare"
mkdir -p "$OUT"
GOBIN="$OUT/gokit-bench"
GOEUREKA="$OUT/gokit-eureka"
RUSTBIN="$TARGET/release/sd-compare"  # the bench profile's output directory is release/

if [ -n "$BUILD" ]; then
    echo "[compare] building go-kit side (go build)" >&2
    (cd bench/gokit && go build -o "$GOBIN" .)
    (cd bench/gokit-eureka && go build -o "$GOEUREKA" .)
    echo "[compare] building sdkit side (cargo build --profile bench -p sd-compare)" >&2
    cargo build --profile bench -p sd-compare >&2
fi
[ -x "$GOBIN" ] || { echo "compare.sh: $GOBIN missing (run without --no-build)" >&2; exit 1; }
if [[ ",$SCENARIOS," == *",eureka,"* ]] && [ ! -x "$GOEUREKA" ]; then
    echo "compare.sh: $GOEUREKA missing (run without --no-build)" >&2; exit 1
fi
[ -x "$RUSTBIN" ] || { echo "compare.sh: $RUSTBIN missing (run without --no-build)" >&2; exit 1; }

# The Consul agent: SD_TEST_CONSUL, or the one scripts/registries is running (nothing is started).
if [ -z "${SD_TEST_CONSUL:-}" ] && [ -x scripts/registries ]; then
    SD_TEST_CONSUL="$(SD_REGISTRIES=consul scripts/registries env 2>/dev/null \
        | sed -n 's/^export SD_TEST_CONSUL=//p' | head -n 1)" || SD_TEST_CONSUL=""
    export SD_TEST_CONSUL
fi
# The ZooKeeper server likewise: SD_TEST_ZK, or the one scripts/registries is running.
if [ -z "${SD_TEST_ZK:-}" ] && [ -x scripts/registries ]; then
    SD_TEST_ZK="$(SD_REGISTRIES=zk scripts/registries env 2>/dev/null \
        | sed -n 's/^export SD_TEST_ZK=//p' | head -n 1)" || SD_TEST_ZK=""
    export SD_TEST_ZK
fi
if [ -z "${SD_TEST_ZK:-}" ] && [[ ",$SCENARIOS," == *",zk,"* ]]; then
    echo "[compare] SD_TEST_ZK not set: the ZooKeeper scenario will be skipped" \
         "(eval \"\$(scripts/registries up)\" first)" >&2
fi
# The etcd 3.4 server likewise: SD_TEST_ETCD, or the one scripts/registries is running.
if [ -z "${SD_TEST_ETCD:-}" ] && [ -x scripts/registries ]; then
    SD_TEST_ETCD="$(SD_REGISTRIES=etcd scripts/registries env 2>/dev/null \
        | sed -n 's/^export SD_TEST_ETCD=//p' | head -n 1)" || SD_TEST_ETCD=""
    export SD_TEST_ETCD
fi
if [ -z "${SD_TEST_ETCD:-}" ] && [[ ",$SCENARIOS," == *",etcd,"* ]]; then
    echo "[compare] SD_TEST_ETCD not set: the etcd scenario will be skipped" \
         "(eval \"\$(scripts/registries up)\" first)" >&2
fi
# The Eureka server likewise: SD_TEST_EUREKA, or the one scripts/registries is running.
if [ -z "${SD_TEST_EUREKA:-}" ] && [ -x scripts/registries ]; then
    SD_TEST_EUREKA="$(SD_REGISTRIES=eureka scripts/registries env 2>/dev/null \
        | sed -n 's/^export SD_TEST_EUREKA=//p' | head -n 1)" || SD_TEST_EUREKA=""
    export SD_TEST_EUREKA
fi
# The BIND server likewise (SD_TEST_DNS and its zone), for the DNS SRV scenario.
if [ -z "${SD_TEST_DNS:-}" ] && [ -x scripts/registries ]; then
    DNS_ENV="$(SD_REGISTRIES=dns scripts/registries env 2>/dev/null)" || DNS_ENV=""
    SD_TEST_DNS="$(echo "$DNS_ENV" | sed -n 's/^export SD_TEST_DNS=//p' | head -n 1)"
    SD_TEST_DNS_ZONE="$(echo "$DNS_ENV" | sed -n 's/^export SD_TEST_DNS_ZONE=//p' | head -n 1)"
    export SD_TEST_DNS SD_TEST_DNS_ZONE
fi
if [ -z "${SD_TEST_DNS:-}" ] && [[ ",$SCENARIOS," == *",dns,"* ]]; then
    echo "[compare] SD_TEST_DNS not set: the DNS SRV scenario will be skipped" \
         "(eval \"\$(scripts/registries up)\" first)" >&2
fi
if [ -z "${SD_TEST_CONSUL:-}" ] && [[ ",$SCENARIOS," == *",consul"* ]]; then
    echo "[compare] SD_TEST_CONSUL not set: the Consul scenario will be skipped" \
         "(eval \"\$(scripts/registries up)\" first)" >&2
fi

# Memory and Consul run in processes of their own: memory so that earlier scenarios do not
# blur the RSS reading; Consul under the registries harness's shared lock, so that a fault
# test of another suite (which kills or pauses the agent under the exclusive lock) cannot
# run in the middle of it.
MAIN=",$SCENARIOS,"
for own in memory consul consulreq zk etcd dns eureka updatescale fanoutscale consul_scale etcd_scale etcd_scale_shared; do
    MAIN="${MAIN//,$own,/,}"
done
MAIN="$(echo "$MAIN" | sed 's/^,*//; s/,*$//')"
EXTRA=()
if [[ ",$SCENARIOS," == *",consul,"* ]]; then EXTRA+=(consul); fi
if [[ ",$SCENARIOS," == *",consulreq,"* ]]; then EXTRA+=(consulreq); fi
if [[ ",$SCENARIOS," == *",zk,"* ]]; then EXTRA+=(zk); fi
if [[ ",$SCENARIOS," == *",etcd,"* ]]; then EXTRA+=(etcd); fi
if [[ ",$SCENARIOS," == *",dns,"* ]]; then EXTRA+=(dns); fi
if [[ ",$SCENARIOS," == *",eureka,"* ]]; then EXTRA+=(eureka); fi
if [[ ",$SCENARIOS," == *",updatescale,"* ]]; then EXTRA+=(updatescale); fi
if [[ ",$SCENARIOS," == *",fanoutscale,"* ]]; then EXTRA+=(fanoutscale); fi
if [[ ",$SCENARIOS," == *",memory,"* ]]; then EXTRA+=(memory); fi
if [[ ",$SCENARIOS," == *",consul_scale,"* ]]; then EXTRA+=(consul_scale); fi
if [[ ",$SCENARIOS," == *",etcd_scale,"* ]]; then EXTRA+=(etcd_scale); fi
if [[ ",$SCENARIOS," == *",etcd_scale_shared,"* ]]; then EXTRA+=(etcd_scale_shared); fi
LOCKS="${SD_REGISTRIES_DIR:-$ROOT/target/registries}/locks"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

# Go's 2-thread rows run 2 goroutines in parallel, like our 2 threads: say so explicitly
# rather than rely on this machine having 2 cores.
export GOMAXPROCS=2

RESULTS="$OUT/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
ERRORS="$OUT/stderr.log"
: > "$RESULTS"
: > "$ERRORS"

# run SIDE BIN SCENARIOS: appends the JSON lines; a failure is recorded as a "skipped" line
# (shown under the table) and the run goes on.
run() {
    local side="$1" bin="$2" list="$3"
    # go-kit's Eureka side is a program of its own (bench/gokit-eureka).
    [ "$list" = eureka ] && [ "$side" = gokit ] && bin="$GOEUREKA"
    local cmd=("$bin" -scenarios "$list")
    local reg="${list%%_*}"  # the scale scenarios hold their registry's lock
    # etcd_scale_shared is ours on the shared watch, compared with go-kit's etcd_scale.
    [ "$list" = etcd_scale_shared ] && [ "$side" = gokit ] && return 0
    [ -n "$QUICK" ] && [ "$list" != memory ] && cmd+=("$QUICK")
    # consulreq uses the same agent as consul, under the same lock.
    [ "$list" = consulreq ] && reg=consul
    if { [ "$reg" = consul ] && [ -n "${SD_TEST_CONSUL:-}" ]; } \
        || { [ "$list" = zk ] && [ -n "${SD_TEST_ZK:-}" ]; } \
        || { [ "$reg" = etcd ] && [ -n "${SD_TEST_ETCD:-}" ]; } \
        || { [ "$list" = dns ] && [ -n "${SD_TEST_DNS:-}" ]; } \
        || { [ "$list" = eureka ] && [ -n "${SD_TEST_EUREKA:-}" ]; }; then
        if command -v flock >/dev/null; then
            mkdir -p "$LOCKS"
            cmd=(flock --shared -w 120 "$LOCKS/$reg.lock" "${cmd[@]}")
        fi
    fi
    local err
    err="$(mktemp)"
    if ! "${cmd[@]}" >> "$RESULTS" 2> "$err"; then
        local why
        why="$(tail -n 1 "$err" | tr -d '"\\')"
        echo "[compare] $side $list failed: $why" >&2
        printf '{"impl":"%s","scenario":"%s","skipped":"failed in round %s: %s"}\n' \
            "$side" "$list" "$round" "$why" >> "$RESULTS"
    fi
    cat "$err" >> "$ERRORS"
    rm -f "$err"
}

start=$(date +%s)
for round in $(seq 1 "$ROUNDS"); do
    for side in gokit sdkit; do
        bin="$GOBIN"; [ "$side" = sdkit ] && bin="$RUSTBIN"
        echo "[compare] round $round/$ROUNDS: $side" >&2
        if [ -n "$MAIN" ]; then run "$side" "$bin" "$MAIN"; fi
        for extra in "${EXTRA[@]}"; do run "$side" "$bin" "$extra"; done
    done
done
echo "[compare] $ROUNDS rounds in $(( $(date +%s) - start )) s; raw results: $RESULTS" >&2

HEADER="$OUT/header.md"
{
    echo "Measured $(date -u '+%Y-%m-%d %H:%M UTC') on $(nproc) cores" \
         "($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))," \
         "load average before the run: $LOAD_BEFORE," \
         "Go $(go env GOVERSION 2>/dev/null | sed 's/^go//'), $(rustc --version | cut -d' ' -f1-2), with:"
    echo
    echo '```sh'
    echo "$COMMAND"
    echo '```'
} > "$HEADER"

ARGS=("$RESULTS")
[ -n "$WRITE_DOCS" ] && ARGS+=(--docs "$ROOT/docs/BENCHMARKS.md" --header-file "$HEADER")
cat "$HEADER"
echo
python3 bench/compare.py "${ARGS[@]}"
