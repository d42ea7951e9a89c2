#!/usr/bin/env bash
# tools/bench/rules_callgrind.sh - instructions smtptap executes (callgrind,
# the whole process: event loop and recording thread) for N messages
# (default 2000; 10 reused connections, 1 KiB, smtp-source -> smtptap ->
# smtp-sink on 127.0.0.1), without and with tools/bench/nomatch.rules.
# Instruction counts do not depend on what else the machine runs, so on a
# shared machine they show the cost of rule matching where msg/s cannot.
#
#   bash tools/bench/rules_callgrind.sh [SMTPTAP [N]]
#
# Prints both totals and their ratio; the callgrind files stay in the
# printed directory (callgrind_annotate FILE for the functions).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BIN=${1:-$ROOT/build/smtptap}
N=${2:-2000}
W=$(mktemp -d /tmp/smtptap-rules-cg.XXXXXX)
SINK_USER=()
[[ $(id -u) == 0 ]] && SINK_USER=(-u nobody)
free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

run() { # name [rules]
	local name=$1 sp port="" i tap sink
	local args=()
	[[ $# -gt 1 ]] && args=(--rules "$2" --rules-seed 1)
	sp=$(free_port)
	smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$sp" 1024 >/dev/null 2>&1 &
	sink=$!
	sleep 0.3
	valgrind --tool=callgrind --callgrind-out-file="$W/$name.cg" "$BIN" proxy --listen 127.0.0.1:0 \
		--upstream "127.0.0.1:$sp" --db "$W/$name.db" "${args[@]}" >"$W/$name.log" 2>&1 &
	tap=$!
	for ((i = 0; i < 300; i++)); do
		port=$(grep -oE 'listening on [^ ]*:[0-9]+' "$W/$name.log" | grep -oE '[0-9]+$' | head -1 || true)
		[[ -n $port ]] && break
		sleep 0.1
	done
	[[ -n $port ]] || { kill "$tap" "$sink"; echo "smtptap did not start: $W/$name.log" >&2; exit 1; }
	timeout 600 smtp-source -s 10 -m "$N" -l 1024 -f bench@example.com -t sink@example.com \
		-M bench.example -d "127.0.0.1:$port"
	kill -TERM "$tap"
	wait "$tap" || true
	kill "$sink"
	wait "$sink" 2>/dev/null || true
	[[ $(/usr/bin/python3 "$ROOT/tools/bench/dbcount.py" "$W/$name.db" --rule-events) == 0 ]] ||
		{ echo "$name: a rule fired" >&2; exit 1; }
	grep -E '^summary:' "$W/$name.cg" | awk '{print $2}'
}
a=$(run plain)
b=$(run rules "$ROOT/tools/bench/nomatch.rules")
awk -v a="$a" -v b="$b" -v n="$N" 'BEGIN {
	printf "instructions, %d messages: without rules %d (%.0f per message), with nomatch.rules %d (%.0f per message): %.3fx\n",
		n, a, a / n, b, b / n, b / a }'
echo "callgrind files: $W/plain.cg $W/rules.cg"
