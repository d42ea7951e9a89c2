#!/usr/bin/env bash
# tools/bench.sh - throughput benchmark: smtp-source -> RELAY -> smtp-sink.
#
# `make bench` runs this after building build/smtptap.  Each workload is run
# against every relay, interleaved (direct, haproxy, aiosmtpd, smtptap, then
# again), BENCH_REPEAT times; the report gives the medians.  Every
# measurement gets a fresh smtp-sink and a fresh relay process, so the peak
# RSS is that of one workload.  Everything listens on 127.0.0.1, on ports
# picked at run time.  See docs/performance.md for the latest results and
# how to read them.
#
# Relays:
#   direct    smtp-source straight to smtp-sink (the ceiling)
#   haproxy   haproxy in TCP mode (a byte pipe: the cost of one more hop)
#   aiosmtpd  aiosmtpd's stock Proxy handler (a recording-capable SMTP proxy
#             written in Python; see tools/bench/aiosmtpd_cli_proxy.py)
#   smtptap   build/smtptap proxy with full recording to a fresh SQLite DB
#
# Workloads (BENCH_SCALE multiplies the message counts; aiosmtpd, about ten
# times slower, gets smaller counts so that every measurement takes roughly
# 3-10 s; msg/s and CPU per message do not depend on the count):
#                                                          messages (aiosmtpd)
#   A  1 KiB messages, 1 session, connection reused        15000  (3000)
#   B  1 KiB messages, 50 concurrent reused connections    50000  (5000)
#   C  1 MiB messages, 10 concurrent reused connections      300    (60)
#   D  1 KiB messages, a new connection per message,       10000  (3000)
#      10 concurrent (the WordPress/PHP pattern)
#
# Environment:
#   BENCH_RELAYS     relays to run (default "direct haproxy aiosmtpd smtptap")
#   BENCH_WORKLOADS  workloads to run (default "A B C D")
#   BENCH_REPEAT     repetitions, median reported (default 3; quick: 1)
#   BENCH_SCALE      message count multiplier, may be fractional (default 1)
#   BENCH_QUICK=1    smoke test: tiny counts, 1 repetition, no docs update
#   BENCH_TIMEOUT    bound on one smtp-source run, seconds (default 180)
#   BENCH_IDLE_WAIT  before each measurement wait up to this many seconds
#                    (default 15; 0 = never) for the machine to be quiet:
#                    other processes using < BENCH_IDLE_LOAD CPUs (0.3)
#   BENCH_DOC        markdown report path; default docs/performance.md for a
#                    full run (all relays and workloads, not quick), else
#                    none.  Set it empty to never write one.
#   BENCH_KEEP=1     keep the temporary directory (logs, databases)
#   SMTPTAP          the binary to measure (default build/smtptap)
#
# Exit status: 0 when every measurement succeeded (and smtptap recorded
# every message), 1 otherwise; 2 for a usage or setup error.

# shellcheck disable=SC2317 # cleanup and start_<relay> are called indirectly
set -uo pipefail
# The BENCH_* settings given by the caller, for the report's "command" line.
CALLER_ENV=""
for _v in $(compgen -e | grep -E '^(BENCH_[A-Z_]+|SMTPTAP)$' | sort); do
	if [[ ${!_v} =~ ^[A-Za-z0-9_./:=,+-]*$ ]]; then
		CALLER_ENV+="$_v=${!_v} "
	else
		CALLER_ENV+="$_v=\"${!_v}\" "
	fi
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=/usr/bin/python3 # Debian's interpreter: the one with aiosmtpd
SMTPTAP=${SMTPTAP:-$ROOT/build/smtptap}
BENCH_QUICK=${BENCH_QUICK:-0}
BENCH_RELAYS=${BENCH_RELAYS:-direct haproxy aiosmtpd smtptap}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-A B C D}
BENCH_SCALE=${BENCH_SCALE:-1}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-15}
BENCH_IDLE_LOAD=${BENCH_IDLE_LOAD:-0.3}
if [[ $BENCH_QUICK == 1 ]]; then
	BENCH_REPEAT=${BENCH_REPEAT:-1}
else
	BENCH_REPEAT=${BENCH_REPEAT:-3}
fi
RESULTS_DIR=$ROOT/build/bench

die() {
	echo "bench: $*" >&2
	exit 2
}
warn() {
	echo "bench: WARNING: $*" >&2
}
loud() {
	{
		echo "bench: ################################################################"
		echo "bench: ## $*"
		echo "bench: ################################################################"
	} >&2
}

# ---- workloads: sessions, reuse (1 = -d), message size, base count ----
declare -A W_SESS=([A]=1 [B]=50 [C]=10 [D]=10)
declare -A W_REUSE=([A]=1 [B]=1 [C]=1 [D]=0)
declare -A W_SIZE=([A]=1024 [B]=1024 [C]=1048576 [D]=1024)
declare -A W_COUNT=([A]=15000 [B]=50000 [C]=300 [D]=10000)
declare -A W_COUNT_AIOSMTPD=([A]=3000 [B]=5000 [C]=60 [D]=3000)
declare -A W_QUICK=([A]=300 [B]=1000 [C]=20 [D]=300)
declare -A W_DESC=(
	[A]="1 KiB messages, 1 connection reused"
	[B]="1 KiB messages, 50 concurrent reused connections"
	[C]="1 MiB messages, 10 concurrent reused connections"
	[D]="1 KiB messages, new connection per message, 10 concurrent"
)

# ---- checks ----
[[ $BENCH_REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer"
[[ $BENCH_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMEOUT must be a positive integer"
[[ $BENCH_SCALE =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SCALE must be a positive number"
[[ $BENCH_IDLE_WAIT =~ ^[0-9]+$ ]] || die "BENCH_IDLE_WAIT must be a whole number of seconds"
[[ $BENCH_IDLE_LOAD =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_IDLE_LOAD must be a number"
for w in $BENCH_WORKLOADS; do
	[[ -n ${W_SESS[$w]:-} ]] || die "unknown workload '$w' (A B C D)"
done
for r in $BENCH_RELAYS; do
	case $r in
	direct | haproxy | aiosmtpd | smtptap) ;;
	*) die "unknown relay '$r' (direct haproxy aiosmtpd smtptap)" ;;
	esac
done
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-})"; }
need smtp-source "Debian package postfix"
need smtp-sink "Debian package postfix"
need timeout coreutils
need ss iproute2
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (Debian package time)"
[[ -x $PY ]] || die "$PY not found"
for r in $BENCH_RELAYS; do
	case $r in
	haproxy) need haproxy "Debian package haproxy" ;;
	aiosmtpd) $PY -c 'import aiosmtpd' 2>/dev/null || die "aiosmtpd not importable by $PY (Debian package python3-aiosmtpd)" ;;
	smtptap) [[ -x $SMTPTAP ]] || die "$SMTPTAP not built (make all)" ;;
	esac
done

if [[ -z ${BENCH_DOC+set} ]]; then
	BENCH_DOC=""
	if [[ $BENCH_QUICK != 1 && " $(echo "$BENCH_RELAYS" | tr ' ' '\n' | sort | tr '\n' ' ')" == " aiosmtpd direct haproxy smtptap " &&
		"$(echo "$BENCH_WORKLOADS" | tr ' ' '\n' | sort | tr -d '\n')" == "ABCD" ]]; then
		BENCH_DOC=$ROOT/docs/performance.md
	fi
fi

CLK_TCK=$(getconf CLK_TCK)
SINK_USER=()
[[ $(id -u) == 0 ]] && SINK_USER=(-u nobody) # smtp-sink refuses root without -u

# ---- process bookkeeping: every PID we start is listed; EXIT ends them ----
PIDS=()
WORK=""
alive() {
	local st
	[[ -r /proc/$1/stat ]] || return 1
	st=$(<"/proc/$1/stat") || return 1
	st=${st##*) }
	[[ ${st:0:1} != Z ]]
}
# pid [signal] [max seconds] -> sets STOP_SECS, STOP_RC, STOP_KILLED and
# STOP_TICKS (the process's CPU ticks at the last look before it exited).
stop_pid() {
	local pid=$1 sig=${2:-TERM} max=${3:-10} t0 i n t
	STOP_KILLED=0 STOP_TICKS=""
	t0=$EPOCHREALTIME
	kill -s "$sig" "$pid" 2>/dev/null
	n=$((max * 100))
	for ((i = 0; i < n; i++)); do
		alive "$pid" || break
		t=$(cpu_ticks "$pid" 2>/dev/null) && STOP_TICKS=$t
		sleep 0.01
	done
	if alive "$pid"; then
		kill -s KILL "$pid" 2>/dev/null
		STOP_KILLED=1
	fi
	STOP_SECS=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.3f", b-a}')
	wait "$pid" 2>/dev/null
	STOP_RC=$?
}
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		if alive "$p"; then
			kill -TERM "$p" 2>/dev/null
		fi
	done
	for p in "${PIDS[@]}"; do
		for _ in {1..200}; do alive "$p" || break; sleep 0.01; done
		alive "$p" && kill -KILL "$p" 2>/dev/null
		wait "$p" 2>/dev/null
	done
	if [[ -n $WORK && -d $WORK ]]; then
		if [[ $BENCH_KEEP == 1 ]]; then
			echo "bench: kept $WORK" >&2
		else
			rm -rf "$WORK"
		fi
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

WORK=$(mktemp -d /tmp/smtptap-bench.XXXXXX) || die "mktemp failed"
mkdir -p "$RESULTS_DIR" || die "cannot create $RESULTS_DIR"
RESULTS=$RESULTS_DIR/results.tsv
META=$RESULTS_DIR/meta.tsv

# A free TCP port on 127.0.0.1 outside the ephemeral range (so no outgoing
# connection of the benchmark itself can take it between pick and bind).
free_port() {
	$PY - <<'EOF'
import random, socket
lo, hi = 10000, 32000
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        a, b = map(int, f.read().split())
    if a > 12000:
        lo, hi = 10000, a - 1
    else:
        lo, hi = b + 1, 65535
except Exception:
    pass
for _ in range(200):
    p = random.randint(lo, hi)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port")
EOF
}
listening() { [[ -n $(ss -Hltn "sport = :$1" 2>/dev/null) ]]; }
wait_listen() { # pid port seconds
	local i n=$(($3 * 50))
	for ((i = 0; i < n; i++)); do
		alive "$1" || return 1
		listening "$2" && return 0
		sleep 0.02
	done
	return 1
}
cpu_ticks() { # utime+stime of the whole process (all threads), in ticks
	local s
	s=$(<"/proc/$1/stat") || return 1
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	echo $((${12} + ${13}))
}
# Busy ticks of the whole machine (all CPUs, idle and iowait excluded; steal
# included: it is capacity the benchmark did not get).
sys_busy_ticks() {
	local _c user nice sys _idle _iow irq sirq steal _rest
	read -r _c user nice sys _idle _iow irq sirq steal _rest </proc/stat
	echo $((user + nice + sys + irq + sirq + steal))
}
# Wait (at most BENCH_IDLE_WAIT s) until other processes use less than
# BENCH_IDLE_LOAD CPUs, so a measurement does not start in someone's build.
wait_quiet() {
	local deadline b0 b1 load
	((BENCH_IDLE_WAIT > 0)) || return 0
	deadline=$((SECONDS + BENCH_IDLE_WAIT))
	while :; do
		b0=$(sys_busy_ticks)
		sleep 0.5
		b1=$(sys_busy_ticks)
		load=$(awk -v d=$((b1 - b0)) -v k="$CLK_TCK" 'BEGIN{printf "%.2f", d/k/0.5}')
		awk -v l="$load" -v m="$BENCH_IDLE_LOAD" 'BEGIN{exit !(l < m)}' && return 0
		if ((SECONDS >= deadline)); then
			echo "bench: machine still busy (other processes use $load CPUs); measuring anyway" >&2
			return 0
		fi
	done
}
vm_hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null; }

# ---- the relays: start_<relay> T SINKPORT -> sets RELAY_PID, RELAY_PORT ----
start_direct() {
	RELAY_PID=""
	RELAY_PORT=$2
}
start_haproxy() {
	local t=$1 sp=$2 p
	p=$(free_port) || return 1
	cat >"$t/haproxy.cfg" <<EOF
global
	maxconn 4096
defaults
	mode tcp
	maxconn 4096
	timeout connect 5s
	timeout client 120s
	timeout server 120s
frontend smtp_in
	bind 127.0.0.1:$p
	default_backend smtp_sink
backend smtp_sink
	server sink 127.0.0.1:$sp
EOF
	haproxy -db -f "$t/haproxy.cfg" >"$t/relay.log" 2>&1 &
	RELAY_PID=$!
	PIDS+=("$RELAY_PID")
	RELAY_PORT=$p
	wait_listen "$RELAY_PID" "$p" 10
}
start_aiosmtpd() {
	local t=$1 sp=$2 p
	p=$(free_port) || return 1
	PYTHONPATH=$ROOT/tools/bench $PY -m aiosmtpd -n -l "127.0.0.1:$p" \
		-c aiosmtpd_cli_proxy.CliProxy 127.0.0.1 "$sp" >"$t/relay.log" 2>&1 &
	RELAY_PID=$!
	PIDS+=("$RELAY_PID")
	RELAY_PORT=$p
	wait_listen "$RELAY_PID" "$p" 20
}
start_smtptap() {
	local t=$1 sp=$2 i
	"$SMTPTAP" proxy --listen 127.0.0.1:0 --upstream "127.0.0.1:$sp" \
		--db "$t/bench.db" >"$t/relay.log" 2>&1 &
	RELAY_PID=$!
	PIDS+=("$RELAY_PID")
	RELAY_PORT=""
	for ((i = 0; i < 1000; i++)); do
		RELAY_PORT=$(grep -oE 'listening on [^ ]*:[0-9]+' "$t/relay.log" 2>/dev/null |
			head -1 | grep -oE '[0-9]+$')
		[[ -n $RELAY_PORT ]] && break
		alive "$RELAY_PID" || return 1
		sleep 0.02
	done
	[[ -n $RELAY_PORT ]] && wait_listen "$RELAY_PID" "$RELAY_PORT" 5
}

# ---- one measurement: workload relay rep -> appends a line to $RESULTS ----
FAILURES=0
measure() {
	local w=$1 relay=$2 rep=$3
	local t="$WORK/$w-$relay-$rep" sp="" sink_pid="" n s0 s1 src_pid src_rc wall="" c0="" c1="" cpu="" rss=""
	local flush="" db_rows="" db_bytes="" sink_msgs status=ok note="" args cpu_all=""
	local b0 b1 k0 k1 src_ticks="" other=""
	mkdir -p "$t"
	n=${COUNT[$w]}
	[[ $relay == aiosmtpd ]] && n=${COUNT_AIOSMTPD[$w]}

	wait_quiet
	sp=$(free_port) || { warn "no free port"; return 1; }
	smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$sp" 1024 >"$t/sink.out" 2>"$t/sink.err" &
	sink_pid=$!
	PIDS+=("$sink_pid")
	if ! wait_listen "$sink_pid" "$sp" 10; then
		status=fail note="smtp-sink did not start: $(tail -c 300 "$t/sink.err" | tr '\n\t' '  ')"
	fi

	RELAY_PID="" RELAY_PORT=""
	if [[ $status == ok ]] && ! "start_$relay" "$t" "$sp"; then
		status=fail note="$relay did not start: $(tail -c 300 "$t/relay.log" 2>/dev/null | tr '\n\t' '  ')"
	fi

	if [[ $status == ok ]]; then
		args=(-s "${W_SESS[$w]}" -m "$n" -l "${W_SIZE[$w]}" -f bench@example.com
			-t sink@example.com -M bench.example)
		[[ ${W_REUSE[$w]} == 1 ]] && args+=(-d)
		[[ -n $RELAY_PID ]] && c0=$(cpu_ticks "$RELAY_PID")
		k0=$(cpu_ticks "$sink_pid")
		b0=$(sys_busy_ticks)
		s0=$EPOCHREALTIME
		timeout -k 5 "$BENCH_TIMEOUT" /usr/bin/time -f '%U %S' -o "$t/source.time" \
			smtp-source "${args[@]}" "127.0.0.1:$RELAY_PORT" >"$t/source.out" 2>&1 &
		src_pid=$!
		PIDS+=("$src_pid")
		wait "$src_pid"
		src_rc=$?
		s1=$EPOCHREALTIME
		wall=$(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.4f", b-a}')
		b1=$(sys_busy_ticks)
		k1=$(cpu_ticks "$sink_pid")
		if [[ $src_rc == 124 || $src_rc == 137 ]]; then
			status=fail note="smtp-source timed out after ${BENCH_TIMEOUT}s"
		elif [[ $src_rc != 0 ]]; then
			status=fail note="smtp-source exit $src_rc: $(tail -c 300 "$t/source.out" | tr '\n\t' '  ')"
		fi
		if [[ -n $RELAY_PID ]]; then
			if alive "$RELAY_PID"; then
				c1=$(cpu_ticks "$RELAY_PID")
				rss=$(vm_hwm_kb "$RELAY_PID")
				cpu=$((c1 - c0))
			else
				status=fail note="$relay died during the run: $(tail -c 300 "$t/relay.log" | tr '\n\t' '  ')"
			fi
		fi
		# CPUs used by everything but client, relay and sink during the run.
		src_ticks=$(awk -v k="$CLK_TCK" 'NF == 2 && $1 ~ /^[0-9.]+$/ {printf "%.0f", ($1 + $2) * k}' \
			"$t/source.time" 2>/dev/null)
		if [[ -n $src_ticks && -n $k0 && -n $k1 ]]; then
			other=$(awk -v d=$((b1 - b0 - ${cpu:-0} - (k1 - k0) - src_ticks)) -v k="$CLK_TCK" -v w="$wall" \
				'BEGIN{o = d/k/w; printf "%.2f", o < 0 ? 0 : o}')
		fi
	fi

	if [[ -n $RELAY_PID ]]; then
		# Stop the relay; for smtptap this time is the final DB flush.
		if alive "$RELAY_PID"; then
			stop_pid "$RELAY_PID" TERM 60
			flush=$STOP_SECS
			[[ -n ${c0:-} && -n $STOP_TICKS ]] && cpu_all=$((STOP_TICKS - c0))
			[[ -n $cpu && -z $cpu_all ]] && cpu_all=$cpu
			if [[ $relay == smtptap ]]; then
				if [[ $STOP_KILLED == 1 ]]; then
					status=fail note="smtptap did not exit within 60s of SIGTERM (killed)"
				elif [[ $STOP_RC != 0 ]]; then
					status=fail note="smtptap exit status $STOP_RC after SIGTERM: $(tail -c 300 "$t/relay.log" | tr '\n\t' '  ')"
				fi
			fi
		fi
	fi
	if [[ $relay == smtptap && -e $t/bench.db ]]; then
		db_rows=$($PY "$ROOT/tools/bench/dbcount.py" "$t/bench.db")
		db_bytes=$(du -cb "$t"/bench.db* 2>/dev/null | awk 'END{print $1}')
		if [[ ! $db_rows =~ ^[0-9]+$ ]]; then
			loud "smtptap $w rep $rep: cannot count recorded messages: $db_rows"
			status=fail note="DB unreadable: $db_rows"
			db_rows=""
		elif ((db_rows < n)); then
			loud "smtptap $w rep $rep: ONLY $db_rows OF $n MESSAGES RECORDED in the messages table"
			status=fail note="recorded $db_rows of $n messages"
		fi
	fi
	stop_pid "$sink_pid" TERM 5
	sink_msgs=$(tr '\r' '\n' <"$t/sink.out" | grep -oE 'mesg=[0-9]+' | tail -1 | cut -d= -f2)
	if [[ $status == ok && ${sink_msgs:-0} -lt $n ]]; then
		status=fail note="smtp-sink received ${sink_msgs:-0} of $n messages"
	fi
	if [[ $status != ok ]]; then
		FAILURES=$((FAILURES + 1))
		loud "$w/$relay rep $rep FAILED: $note (logs: $t)"
		BENCH_KEEP=1
	fi
	# workload relay rep status msgs wall cpu_ticks clk_tck rss_kb flush_s db_rows
	# db_bytes sink_msgs note cpu_ticks_incl_stop other_cpus
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$w" "$relay" "$rep" "$status" "$n" "${wall:-}" "${cpu:-}" "$CLK_TCK" "${rss:-}" \
		"$flush" "$db_rows" "$db_bytes" "${sink_msgs:-}" "$note" "$cpu_all" "$other" >>"$RESULTS"
	if [[ $status == ok ]]; then
		printf 'bench: %s %-8s rep %d: %6d msgs in %7.3fs = %9.1f msg/s%s\n' "$w" "$relay" "$rep" "$n" "$wall" \
			"$(awk -v n="$n" -v t="$wall" 'BEGIN{print n/t}')" \
			"${RELAY_PID:+, cpu $(awk -v c="$cpu_all" -v k="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.0f", c/k/n*1e6}') us/msg, rss $((rss / 1024)) MB}${flush:+, stop ${flush}s}${other:+, other load $other CPUs}"
	fi
}

# ---- run ----
declare -A COUNT COUNT_AIOSMTPD
scaled() { awk -v c="$1" -v s="$BENCH_SCALE" 'BEGIN{n=int(c*s+0.5); print n<1?1:n}'; }
for w in $BENCH_WORKLOADS; do
	if [[ $BENCH_QUICK == 1 ]]; then
		COUNT[$w]=${W_QUICK[$w]}
		COUNT_AIOSMTPD[$w]=${W_QUICK[$w]}
	else
		COUNT[$w]=$(scaled "${W_COUNT[$w]}")
		COUNT_AIOSMTPD[$w]=$(scaled "${W_COUNT_AIOSMTPD[$w]}")
	fi
done

: >"$RESULTS"
{
	printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
	printf 'nproc\t%s\n' "$(nproc)"
	printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/{print $2; exit}' /proc/cpuinfo)"
	printf 'kernel\t%s\n' "$(uname -sr)"
	printf 'loadavg\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
	printf 'haproxy\t%s\n' "$(haproxy -v 2>/dev/null | head -1)"
	printf 'aiosmtpd\t%s\n' "$($PY -m aiosmtpd --version 2>/dev/null)"
	printf 'python\t%s\n' "$($PY --version 2>&1)"
	printf 'postfix\t%s\n' "$(postconf -d mail_version 2>/dev/null | sed 's/.*= *//')"
	v=$("$SMTPTAP" --version 2>/dev/null) || v=""
	[[ $v =~ ^smtptap\ [^[:space:]]+ ]] && v=${BASH_REMATCH[0]#smtptap } || v="$(cat "$ROOT/VERSION" 2>/dev/null) (VERSION file)"
	printf 'smtptap\t%s\n' "$v"
	printf 'relays\t%s\n' "$BENCH_RELAYS"
	printf 'workloads\t%s\n' "$BENCH_WORKLOADS"
	printf 'repeat\t%s\n' "$BENCH_REPEAT"
	printf 'scale\t%s\n' "$BENCH_SCALE"
	printf 'quick\t%s\n' "$BENCH_QUICK"
	printf 'env\t%s\n' "$CALLER_ENV"
	for w in $BENCH_WORKLOADS; do
		printf 'workload.%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "${COUNT[$w]}" "${W_SESS[$w]}" \
			"${W_REUSE[$w]}" "${W_SIZE[$w]}" "${W_DESC[$w]}" "${COUNT_AIOSMTPD[$w]}"
	done
} >"$META"

echo "bench: relays: $BENCH_RELAYS; workloads: $BENCH_WORKLOADS; repeat $BENCH_REPEAT;" \
	"$([[ $BENCH_QUICK == 1 ]] && echo "QUICK mode" || echo "scale $BENCH_SCALE")"
for w in $BENCH_WORKLOADS; do
	echo "bench: workload $w: ${W_DESC[$w]}; ${COUNT[$w]} messages (aiosmtpd ${COUNT_AIOSMTPD[$w]})"
	for ((rep = 1; rep <= BENCH_REPEAT; rep++)); do
		for relay in $BENCH_RELAYS; do
			measure "$w" "$relay" "$rep"
		done
	done
done

printf 'loadavg_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"
printf 'idle\t%s\t%s\n' "$BENCH_IDLE_WAIT" "$BENCH_IDLE_LOAD" >>"$META"
report_args=(--results "$RESULTS" --meta "$META")
[[ -n $BENCH_DOC ]] && report_args+=(--doc "$BENCH_DOC")
$PY "$ROOT/tools/bench/report.py" "${report_args[@]}" || FAILURES=$((FAILURES + 1))
echo "bench: raw results in $RESULTS"
[[ -n $BENCH_DOC ]] && echo "bench: wrote $BENCH_DOC"
if ((FAILURES > 0)); then
	loud "$FAILURES measurement(s) FAILED - see the warnings above"
	exit 1
fi
exit 0
