#!/usr/bin/env bash
# tools/bench/profile.sh - profile smtptap under one bench workload with perf.
#
#   bash tools/bench/profile.sh [A|B|C|D|T-B|T-D]      (default B)
#
# smtp-source -> build/smtptap proxy (full recording) -> smtp-sink, all on
# 127.0.0.1 with ports picked at run time; for T-B and T-D, implicit TLS on
# both legs through the same stunnel converters and test PKI as make bench
# (tools/bench/tls.sh), after one warm-up message so that the forged
# certificate is cached.  `perf record -g --call-graph dwarf`
# attaches to smtptap (all threads) for the duration of smtp-source.  Prints
# the hottest symbols (self time) and the hottest call chains (children), and
# leaves the data in build/bench/perf-<workload>.data for `perf report -i`.
#
# Environment: SMTPTAP (default build/smtptap), PROFILE_COUNT (messages;
# default: the workload's bench count), PROFILE_TOP (lines, default 40).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PY=/usr/bin/python3
SMTPTAP=${SMTPTAP:-$ROOT/build/smtptap}
W=${1:-B}
TOP=${PROFILE_TOP:-40}
case $W in
A) sess=1 reuse=1 size=1024 count=15000 ;;
B) sess=50 reuse=1 size=1024 count=50000 ;;
C) sess=10 reuse=1 size=1048576 count=300 ;;
D) sess=10 reuse=0 size=1024 count=10000 ;;
T-B) sess=50 reuse=1 size=1024 count=6000 ;;
T-D) sess=10 reuse=0 size=1024 count=1000 ;;
*) echo "usage: $0 [A|B|C|D|T-B|T-D]" >&2; exit 2 ;;
esac
tls=0
[[ $W == T-* ]] && tls=1
count=${PROFILE_COUNT:-$count}
[[ -x $SMTPTAP ]] || { echo "profile: $SMTPTAP not built" >&2; exit 2; }
if ((tls)); then
	command -v stunnel >/dev/null || { echo "profile: stunnel not found (Debian package stunnel4)" >&2; exit 2; }
	# shellcheck source=tools/bench/tls.sh
	. "$ROOT/tools/bench/tls.sh"
fi
command -v perf >/dev/null || { echo "profile: perf not found (Debian package linux-perf)" >&2; exit 2; }

PIDS=()
WORK=$(mktemp -d /tmp/smtptap-profile.XXXXXX) || exit 2
alive() { [[ -r /proc/$1/stat ]] && [[ $({ cut -d')' -f2 <"/proc/$1/stat"; } 2>/dev/null) != " Z"* ]]; }
cleanup() {
	local p
	for p in "${PIDS[@]}"; do alive "$p" && kill -TERM "$p" 2>/dev/null; done
	for p in "${PIDS[@]}"; do
		for _ in {1..500}; do alive "$p" || break; sleep 0.02; done
		alive "$p" && kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

port0() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
# role accept_port connect_port: a stunnel converter, listening on return.
start_stunnel() {
	local pid
	bench_tls_stunnel_conf "$1" "$2" "$3" "$WORK/pki" >"$WORK/stunnel-$1.conf"
	stunnel "$WORK/stunnel-$1.conf" >"$WORK/stunnel-$1.log" 2>&1 &
	pid=$!
	PIDS+=("$pid")
	for _ in {1..500}; do
		listening "$2" && return 0
		alive "$pid" || break
		sleep 0.02
	done
	echo "profile: stunnel ($1) did not start:" >&2
	cat "$WORK/stunnel-$1.log" >&2
	exit 1
}
sp=$(port0)
sink_user=()
[[ $(id -u) == 0 ]] && sink_user=(-u nobody)
smtp-sink "${sink_user[@]}" "127.0.0.1:$sp" 1024 >/dev/null 2>&1 &
PIDS+=($!)
up=$sp
tap_args=()
if ((tls)); then
	bench_tls_make_pki "$WORK/pki" ec || { cat "$WORK/pki/openssl.log" >&2; exit 1; }
	ssp=$(port0)
	start_stunnel server "$ssp" "$sp"
	up=$ssp
	bench_tls_smtptap_args "$WORK/ca" "$WORK/pki" || exit 1
	tap_args=("${BENCH_TLS_SMTPTAP_ARGS[@]}")
fi
"$SMTPTAP" proxy --listen 127.0.0.1:0 --upstream "127.0.0.1:$up" --db "$WORK/bench.db" "${tap_args[@]}" \
	>"$WORK/tap.log" 2>&1 &
tap=$!
PIDS+=("$tap")
port=""
for _ in {1..500}; do
	port=$(grep -oE 'listening on [^ ]*:[0-9]+' "$WORK/tap.log" | head -1 | grep -oE '[0-9]+$')
	[[ -n $port ]] && break
	alive "$tap" || break
	sleep 0.02
done
[[ -n $port ]] || { echo "profile: smtptap did not start:" >&2; cat "$WORK/tap.log" >&2; exit 1; }
if ((tls)); then
	scp=$(port0)
	start_stunnel client "$scp" "$port"
	port=$scp
	timeout -k 5 30 smtp-source -s 1 -m 1 -l "$size" -f bench@example.com -t sink@example.com \
		-M bench.example "127.0.0.1:$port" || { echo "profile: the warm-up message failed" >&2; exit 1; }
fi

mkdir -p "$ROOT/build/bench"
out=$ROOT/build/bench/perf-$W.data
perf record -q -g --call-graph dwarf,16384 -F 999 -p "$tap" -o "$out" >"$WORK/perf.log" 2>&1 &
perf_pid=$!
PIDS+=("$perf_pid")
sleep 0.5
args=(-s "$sess" -m "$count" -l "$size" -f bench@example.com -t sink@example.com -M bench.example)
((reuse)) && args+=(-d)
t0=$EPOCHREALTIME
timeout -k 5 300 smtp-source "${args[@]}" "127.0.0.1:$port" || echo "profile: smtp-source failed" >&2
t1=$EPOCHREALTIME
kill -INT "$perf_pid"
wait "$perf_pid"
kill -TERM "$tap"
wait "$tap"
((tls)) && grep -i 'forged' "$WORK/tap.log" | sed 's/^/profile: /'
echo "profile: workload $W, $count messages in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') s" \
	"($(awk -v a="$t0" -v b="$t1" -v n="$count" 'BEGIN{printf "%.0f", n/(b-a)}') msg/s under perf)"
echo
echo "== hottest symbols (self time) =="
perf report -i "$out" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
	grep -v '^#' | grep -v '^$' | head -n "$TOP"
echo
echo "== inclusive time (children: the function and what it calls) =="
perf report -i "$out" --children --sort dso,sym --stdio -g none 2>/dev/null |
	grep -v '^#' | grep -v '^$' | head -n "$TOP"
echo
echo "profile: data in $out (perf report -i $out)"
