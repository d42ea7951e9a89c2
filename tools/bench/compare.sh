#!/usr/bin/env bash
# tools/bench/compare.sh - two smtptap binaries side by side, on a shared
# machine: whole bench runs alternating between them (each with haproxy),
# or instruction counts under callgrind.
#
#   bash tools/bench/compare.sh bench BEFORE AFTER [ROUNDS]
#   bash tools/bench/compare.sh callgrind BEFORE AFTER
#
# bench: ROUNDS (default 3) rounds of `tools/bench.sh` with
# BENCH_RELAYS="haproxy smtptap" BENCH_REPEAT=1, BEFORE then AFTER, on
# BENCH_WORKLOADS (default "A B C D"; other BENCH_* settings pass through,
# BENCH_IDLE_WAIT defaults to 5); no report is written.  Prints per
# workload and binary the medians over the rounds, (min-max), of: msg/s
# divided by haproxy's in the same run, smtptap's CPU per message, its
# writer thread's, haproxy's, and smtptap's peak RSS, with the load average
# before and after each run.  Interleaving puts both binaries under the
# same load; CPU per message moves less with it than msg/s does.
#
# callgrind: the instructions the whole process executes (user space;
# event loop and writer thread) for 2000 messages of 1 KiB over 10 reused
# connections, 1000 of 1 KiB with a connection each, and 20 of 1 MiB over
# 10 reused connections (start-up included), smtp-source -> smtptap ->
# smtp-sink on 127.0.0.1.  Slow (minutes), but independent of the load.
#
# Everything listens on 127.0.0.1 with ports picked at run time.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=/usr/bin/python3
usage() {
	echo "usage: $0 bench BEFORE AFTER [ROUNDS] | $0 callgrind BEFORE AFTER" >&2
	exit 2
}
[[ $# -ge 3 ]] || usage
MODE=$1 BEFORE=$2 AFTER=$3 ROUNDS=${4:-3}
for b in "$BEFORE" "$AFTER"; do
	[[ -x $b ]] || { echo "compare: $b is not an executable" >&2; exit 2; }
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || usage
W=$(mktemp -d /tmp/smtptap-compare.XXXXXX) || exit 2
echo "compare: results in $W"

if [[ $MODE == bench ]]; then
	for ((i = 1; i <= ROUNDS; i++)); do
		for b in before after; do
			bin=$BEFORE
			[[ $b == after ]] && bin=$AFTER
			echo "compare: round $i $b: load $(cut -d' ' -f1-3 /proc/loadavg) at $(date -u +%H:%M:%S)"
			BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-5} BENCH_DOC='' BENCH_RELAYS="haproxy smtptap" \
				BENCH_WORKLOADS=${BENCH_WORKLOADS:-A B C D} BENCH_REPEAT=1 SMTPTAP=$bin \
				bash "$ROOT/tools/bench.sh" >"$W/bench-$i-$b.log" 2>&1 ||
				echo "compare: round $i $b: bench.sh failed (see $W/bench-$i-$b.log)" >&2
			grep -E '^bench: [A-Z-]+ ' "$W/bench-$i-$b.log"
			cp "$ROOT/build/bench/results.tsv" "$W/results-$i-$b.tsv" 2>/dev/null
		done
	done
	echo "compare: load $(cut -d' ' -f1-3 /proc/loadavg) at the end ($(date -u +%H:%M:%S))"
	$PY - "$W" <<'EOF'
import glob, statistics, sys
# tools/bench.sh's results.tsv columns (see report.py FIELDS)
F = ["workload", "relay", "rep", "status", "msgs", "wall", "cpu_ticks", "clk_tck", "rss_kb", "flush_s",
     "db_rows", "db_bytes", "sink_msgs", "note", "cpu_ticks_all", "other_cpus", "src_ticks", "sink_ticks",
     "sc", "ss", "warm", "tls", "forge", "writer_ticks"]
cells = {}
for path in sorted(glob.glob(sys.argv[1] + "/results-*.tsv")):
    _, rnd, b = path.rsplit("/", 1)[1][:-4].split("-")
    for line in open(path):
        x = dict(zip(F, line.rstrip("\n").split("\t")))
        if x.get("status") != "ok":
            print("compare: %s %s round %s %s failed: %s" % (x.get("workload"), x.get("relay"), rnd, b, x.get("note")))
            continue
        n, t = int(x["msgs"]), float(x["clk_tck"])
        cells.setdefault((x["workload"], b, rnd), {})[x["relay"]] = dict(
            rate=n / float(x["wall"]), cpu=float(x["cpu_ticks_all"] or x["cpu_ticks"]) / t / n * 1e6,
            writer=float(x["writer_ticks"]) / t / n * 1e6 if x["writer_ticks"] else None,
            rss=float(x["rss_kb"]) / 1024 if x["rss_kb"] else None, other=float(x["other_cpus"] or 0))
def cell(vals, fmt):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return (fmt % statistics.median(vals)) + " (" + (fmt % min(vals)) + "-" + (fmt % max(vals)) + ")"
print()
print("| workload | binary | msg/s vs haproxy | CPU us/msg | writer us/msg | haproxy CPU us/msg | peak RSS MB | other load |")
print("|---|---|--:|--:|--:|--:|--:|--:|")
for w in sorted({k[0] for k in cells}):
    for b in ("before", "after"):
        got = [cells[k] for k in sorted(cells) if k[0] == w and k[1] == b and "smtptap" in cells[k] and "haproxy" in cells[k]]
        if not got:
            continue
        s = [g["smtptap"] for g in got]
        h = [g["haproxy"] for g in got]
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            w, b, cell([a["rate"] / c["rate"] for a, c in zip(s, h)], "%.2f"), cell([a["cpu"] for a in s], "%.0f"),
            cell([a["writer"] for a in s], "%.0f"), cell([c["cpu"] for c in h], "%.0f"),
            cell([a["rss"] for a in s], "%.1f"), cell([max(a["other"], c["other"]) for a, c in zip(s, h)], "%.2f")))
EOF
	exit 0
fi

[[ $MODE == callgrind ]] || usage
command -v valgrind >/dev/null || { echo "compare: valgrind not found" >&2; exit 2; }
SINK_USER=()
[[ $(id -u) == 0 ]] && SINK_USER=(-u nobody)
free_port() { $PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# name binary messages size sessions reuse -> prints the instruction total
cg_run() {
	local name=$1 bin=$2 n=$3 size=$4 sess=$5 reuse=$6 sp port="" tap sink i args
	sp=$(free_port)
	smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$sp" 1024 >/dev/null 2>&1 &
	sink=$!
	sleep 0.3
	valgrind --tool=callgrind --callgrind-out-file="$W/$name.cg" "$bin" proxy --listen 127.0.0.1:0 \
		--upstream "127.0.0.1:$sp" --db "$W/$name.db" >"$W/$name.log" 2>&1 &
	tap=$!
	for ((i = 0; i < 1200; i++)); do
		port=$(grep -oE 'listening on [^ ]*:[0-9]+' "$W/$name.log" | grep -oE '[0-9]+$' | head -1 || true)
		[[ -n $port ]] && break
		sleep 0.1
	done
	if [[ -z $port ]]; then
		kill "$tap" "$sink"
		echo "compare: smtptap did not start: $W/$name.log" >&2
		return 1
	fi
	args=(-s "$sess" -m "$n" -l "$size" -f bench@example.com -t sink@example.com -M bench.example)
	((reuse)) && args+=(-d)
	timeout 1200 smtp-source "${args[@]}" "127.0.0.1:$port" || echo "compare: smtp-source failed ($name)" >&2
	kill -TERM "$tap"
	wait "$tap"
	kill -TERM "$sink"
	wait "$sink" 2>/dev/null
	rm -rf "$W/$name.db" "$W/$name.db"-*
	awk '/^(summary|totals):/ {print $2; exit}' "$W/$name.cg"
}
printf '| workload | before | after | after/before |\n|---|--:|--:|--:|\n'
for spec in "B-like:2000:1024:10:1" "D-like:1000:1024:10:0" "C-like:20:1048576:10:1"; do
	IFS=: read -r name n size sess reuse <<<"$spec"
	a=$(cg_run "$name-before" "$BEFORE" "$n" "$size" "$sess" "$reuse") || exit 1
	b=$(cg_run "$name-after" "$AFTER" "$n" "$size" "$sess" "$reuse") || exit 1
	awk -v w="$name" -v a="$a" -v b="$b" 'BEGIN{printf "| %s | %.1f M | %.1f M | %.3f |\n", w, a/1e6, b/1e6, b/a}'
done
