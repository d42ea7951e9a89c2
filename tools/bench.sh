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
# Relays (plaintext workloads A-D):
#   direct    smtp-source straight to smtp-sink (the ceiling)
#   haproxy   haproxy in TCP mode (a byte pipe: the cost of one more hop)
#   aiosmtpd  aiosmtpd's stock Proxy handler (a recording-capable SMTP proxy
#             written in Python; see tools/bench/aiosmtpd_cli_proxy.py)
#   smtptap   build/smtptap proxy with full recording to a fresh SQLite DB
#   smtptap-rules  the same with --rules tools/bench/nomatch.rules: 100
#             realistic fault rules none of which matches this traffic
#             (issue 6: matching must cost little, within 5% of smtptap's
#             msg/s in the same run; the report prints the ratio).  A
#             measurement in which a rule fired fails.
#
# TLS workloads (T-B, T-D) use implicit TLS on both legs.  smtp-source and
# smtp-sink speak plaintext only, so stunnel converts at both ends, the same
# two converters for every relay:
#   smtp-source -> stunnel client (plain in, TLS out) -> RELAY (TLS in, TLS
#   out) -> stunnel server (TLS in, plain out) -> smtp-sink
# with a test PKI made at run time (a CA and a leaf for localhost/127.0.0.1).
# Every TLS leg verifies its peer (chain and name).  The stunnel client never
# resumes a session (like a PHP request: a full handshake on the client leg
# of every connection); the upstream leg resumes as each relay does by
# default (haproxy reuses its last session per server, smtptap its last
# ticket per upstream name) unless BENCH_TLS_RESUME=0.  Relays:
#   direct-tls   stunnel client straight to stunnel server (the ceiling)
#   haproxy-tls  haproxy terminating TLS with the bench leaf (`bind ... ssl
#                crt`) and re-originating it (`server ... ssl verify
#                required ca-file CA verifyhost localhost`)
#   smtptap-tls  build/smtptap proxy --client-tls implicit --upstream-tls
#                implicit, full recording, forging with the bench CA
#                (--ca-dir) and trusting it upstream (--upstream-ca)
# Before a TLS measurement one message goes through the pipeline (not
# counted), so smtptap's forged certificate is a cache hit on every measured
# connection.  smtptap's forging counters are read from the line it logs at
# exit (with "forged" and "cache"); should a build log it only with -v, a
# short extra run with -v after the workload reads it (-v logs every
# command, which would slow the measured runs).
#
# Workloads (BENCH_SCALE multiplies the message counts; aiosmtpd, about ten
# times slower, gets smaller counts so that every measurement takes roughly
# 3-10 s; msg/s and CPU per message do not depend on the count):
#                                                          messages (aiosmtpd)
#   A    1 KiB messages, 1 session, connection reused        15000  (3000)
#   B    1 KiB messages, 50 concurrent reused connections    50000  (5000)
#   C    1 MiB messages, 10 concurrent reused connections      300    (60)
#   D    1 KiB messages, a new connection per message,       10000  (3000)
#        10 concurrent (the WordPress/PHP pattern)
#   T-B  B over implicit TLS on both legs                      6000
#   T-D  D over implicit TLS on both legs (two full            1000
#        handshakes per message through a relay)
#
# Each workload runs the relays of its kind from BENCH_RELAYS (plaintext
# relays on A-D, -tls relays on T-B and T-D).
#
# Environment:
#   BENCH_RELAYS     relays to run (default "direct haproxy aiosmtpd smtptap
#                    smtptap-rules direct-tls haproxy-tls smtptap-tls";
#                    BENCH_RELAYS="smtptap smtptap-rules" BENCH_WORKLOADS="B D"
#                    is the rules check alone)
#   BENCH_WORKLOADS  workloads to run (default "A B C D T-B T-D")
#   BENCH_REPEAT     repetitions, median reported (default 3; quick: 1)
#   BENCH_SCALE      message count multiplier, may be fractional (default 1)
#   BENCH_QUICK=1    smoke test: tiny counts, 1 repetition, no docs update
#   BENCH_TIMEOUT    bound on one smtp-source run, seconds (default 180)
#   BENCH_IDLE_WAIT  before each measurement wait up to this many seconds
#                    (default 15; 0 = never) for the machine to be quiet:
#                    other processes using < BENCH_IDLE_LOAD CPUs (0.3)
#   BENCH_TLS_KEY    key type of the test PKI: ec (P-256, default, the type
#                    of smtptap's forged leaves) or rsa (2048 bits: haproxy
#                    then signs with RSA while smtptap still serves its P-256
#                    leaf, so the comparison favours smtptap; for seeing what
#                    an RSA upstream costs, not for the target)
#   BENCH_DOC        markdown report path; default docs/performance.md for a
#                    full run of a suite (all plaintext relays on A-D, or
#                    all TLS relays on T-B and T-D; not quick), which
#                    rewrites that suite's part only.  Set it empty to
#                    never write one.
#   BENCH_TLS_RESUME=0  no resumption on the upstream leg either: the stunnel
#                    server refuses it and haproxy gets no-ssl-reuse (every
#                    handshake on both legs a full one)
#   BENCH_HAPROXY_THREADS  haproxy's nbthread (default: haproxy's own
#                    default, one thread per CPU; smtptap relays on one)
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
# shellcheck source=tools/bench/tls.sh
. "$ROOT/tools/bench/tls.sh"
PY=/usr/bin/python3 # Debian's interpreter: the one with aiosmtpd
SMTPTAP=${SMTPTAP:-$ROOT/build/smtptap}
BENCH_QUICK=${BENCH_QUICK:-0}
PLAIN_RELAYS="direct haproxy aiosmtpd smtptap smtptap-rules"
TLS_RELAYS="direct-tls haproxy-tls smtptap-tls"
BENCH_RELAYS=${BENCH_RELAYS:-$PLAIN_RELAYS $TLS_RELAYS}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-A B C D T-B T-D}
BENCH_TLS_KEY=${BENCH_TLS_KEY:-ec}
BENCH_HAPROXY_THREADS=${BENCH_HAPROXY_THREADS:-}
BENCH_TLS_RESUME=${BENCH_TLS_RESUME:-1}
BENCH_SCALE=${BENCH_SCALE:-1}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-180}
BENCH_KEEP=${BENCH_KEEP:-0}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-15}
BENCH_RULES=$ROOT/tools/bench/nomatch.rules
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

# ---- workloads: sessions, reuse (1 = -d), message size, base count, TLS ----
declare -A W_SESS=([A]=1 [B]=50 [C]=10 [D]=10 [T-B]=50 [T-D]=10)
declare -A W_REUSE=([A]=1 [B]=1 [C]=1 [D]=0 [T-B]=1 [T-D]=0)
declare -A W_SIZE=([A]=1024 [B]=1024 [C]=1048576 [D]=1024 [T-B]=1024 [T-D]=1024)
declare -A W_COUNT=([A]=15000 [B]=50000 [C]=300 [D]=10000 [T-B]=6000 [T-D]=1000)
declare -A W_COUNT_AIOSMTPD=([A]=3000 [B]=5000 [C]=60 [D]=3000 [T-B]=0 [T-D]=0)
declare -A W_QUICK=([A]=300 [B]=1000 [C]=20 [D]=300 [T-B]=500 [T-D]=100)
declare -A W_TLS=([A]=0 [B]=0 [C]=0 [D]=0 [T-B]=1 [T-D]=1)
declare -A W_DESC=(
	[A]="1 KiB messages, 1 connection reused"
	[B]="1 KiB messages, 50 concurrent reused connections"
	[C]="1 MiB messages, 10 concurrent reused connections"
	[D]="1 KiB messages, new connection per message, 10 concurrent"
	[T-B]="1 KiB messages, 50 concurrent reused connections, implicit TLS on both legs"
	[T-D]="1 KiB messages, new connection per message, 10 concurrent, implicit TLS on both legs"
)
is_tls_relay() { [[ $1 == *-tls ]]; }
# The relays of BENCH_RELAYS that run workload $1 (its kind: TLS or not).
relays_for() {
	local r out=""
	for r in $BENCH_RELAYS; do
		if [[ ${W_TLS[$1]} == 1 ]] && is_tls_relay "$r"; then
			out+="$r "
		elif [[ ${W_TLS[$1]} == 0 ]] && ! is_tls_relay "$r"; then
			out+="$r "
		fi
	done
	echo "${out% }"
}

# ---- checks ----
[[ $BENCH_REPEAT =~ ^[1-9][0-9]*$ ]] || die "BENCH_REPEAT must be a positive integer"
[[ $BENCH_TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "BENCH_TIMEOUT must be a positive integer"
[[ $BENCH_SCALE =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SCALE must be a positive number"
[[ $BENCH_IDLE_WAIT =~ ^[0-9]+$ ]] || die "BENCH_IDLE_WAIT must be a whole number of seconds"
[[ $BENCH_IDLE_LOAD =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_IDLE_LOAD must be a number"
[[ $BENCH_TLS_KEY == ec || $BENCH_TLS_KEY == rsa ]] || die "BENCH_TLS_KEY must be ec or rsa"
[[ $BENCH_TLS_RESUME == 0 || $BENCH_TLS_RESUME == 1 ]] || die "BENCH_TLS_RESUME must be 0 or 1"
[[ -z $BENCH_HAPROXY_THREADS || $BENCH_HAPROXY_THREADS =~ ^[1-9][0-9]*$ ]] ||
	die "BENCH_HAPROXY_THREADS must be a positive integer"
# haproxy's default is one thread per CPU; smtptap relays on one thread.
HAPROXY_NBTHREAD_LINE="	# nbthread: haproxy's default (one per CPU)"
[[ -n $BENCH_HAPROXY_THREADS ]] && HAPROXY_NBTHREAD_LINE="	nbthread $BENCH_HAPROXY_THREADS"
for w in $BENCH_WORKLOADS; do
	[[ -n ${W_SESS[$w]:-} ]] || die "unknown workload '$w' (A B C D T-B T-D)"
done
for r in $BENCH_RELAYS; do
	case " $PLAIN_RELAYS $TLS_RELAYS " in
	*" $r "*) ;;
	*) die "unknown relay '$r' ($PLAIN_RELAYS $TLS_RELAYS)" ;;
	esac
done
# Workloads with no relay of their kind are skipped (BENCH_RELAYS="direct-tls
# haproxy-tls" runs T-B and T-D only); nothing at all to run is an error.
RUN_WORKLOADS=""
ANY_TLS=0
for w in $BENCH_WORKLOADS; do
	if [[ -n $(relays_for "$w") ]]; then
		RUN_WORKLOADS+="$w "
		[[ ${W_TLS[$w]} == 1 ]] && ANY_TLS=1
	else
		echo "bench: skipping workload $w: no $([[ ${W_TLS[$w]} == 1 ]] && echo TLS || echo plaintext) relay in BENCH_RELAYS" >&2
	fi
done
RUN_WORKLOADS=${RUN_WORKLOADS% }
[[ -n $RUN_WORKLOADS ]] || die "no workload has a relay of its kind in BENCH_RELAYS ($BENCH_RELAYS)"
need() { command -v "$1" >/dev/null 2>&1 || die "$1 not found (${2:-})"; }
need smtp-source "Debian package postfix"
need smtp-sink "Debian package postfix"
need timeout coreutils
need ss iproute2
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (Debian package time)"
[[ -x $PY ]] || die "$PY not found"
if ((ANY_TLS)); then
	need stunnel "Debian package stunnel4"
	need openssl "Debian package openssl"
fi
for r in $BENCH_RELAYS; do
	case $r in
	haproxy | haproxy-tls) need haproxy "Debian package haproxy" ;;
	aiosmtpd) $PY -c 'import aiosmtpd' 2>/dev/null || die "aiosmtpd not importable by $PY (Debian package python3-aiosmtpd)" ;;
	smtptap | smtptap-tls) [[ -x $SMTPTAP ]] || die "$SMTPTAP not built (make all)" ;;
	smtptap-rules)
		[[ -x $SMTPTAP ]] || die "$SMTPTAP not built (make all)"
		_n=$("$SMTPTAP" rules check "$BENCH_RULES" 2>&1) || die "$BENCH_RULES: $_n"
		[[ $_n == *": 100 rules ok" ]] || die "$BENCH_RULES: expected 100 rules: $_n"
		;;
	esac
done

# The parts of the report this run completes: "plain" when it ran every
# plaintext relay on A-D, "tls" every TLS relay on T-B and T-D.  A report
# rewrites only those parts of BENCH_DOC and keeps the others as they were.
contains_all() { # "have" "want": every word of want is in have
	local x
	for x in $2; do [[ " $1 " == *" $x "* ]] || return 1; done
}
DOC_PARTS=""
if [[ $BENCH_QUICK != 1 ]]; then
	contains_all "$BENCH_RELAYS" "$PLAIN_RELAYS" && contains_all "$BENCH_WORKLOADS" "A B C D" && DOC_PARTS+="plain,"
	contains_all "$BENCH_RELAYS" "$TLS_RELAYS" && contains_all "$BENCH_WORKLOADS" "T-B T-D" && DOC_PARTS+="tls,"
	# smtptap with and without rules on a plaintext workload: the rules part.
	if contains_all "$BENCH_RELAYS" "smtptap smtptap-rules" && [[ " $BENCH_WORKLOADS " =~ \ [ABCD]\  ]]; then
		DOC_PARTS+="rules,"
	fi
fi
DOC_PARTS=${DOC_PARTS%,}
if [[ -z ${BENCH_DOC+set} ]]; then
	BENCH_DOC=""
	[[ -n $DOC_PARTS ]] && BENCH_DOC=$ROOT/docs/performance.md
elif [[ -n $BENCH_DOC && -z $DOC_PARTS ]]; then
	# An explicit BENCH_DOC for a partial or quick run: the kinds it ran.
	for w in $RUN_WORKLOADS; do
		if [[ ${W_TLS[$w]} == 1 ]]; then
			[[ $DOC_PARTS == *tls* ]] || DOC_PARTS+="tls,"
		else
			[[ $DOC_PARTS == *plain* ]] || DOC_PARTS+="plain,"
		fi
	done
	DOC_PARTS=${DOC_PARTS%,}
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
# utime+stime of smtptap's store writer thread (named smtptap-writer), in ticks
writer_ticks() {
	local d c st
	for d in /proc/"$1"/task/*; do
		c=$(<"$d/comm") 2>/dev/null || continue
		[[ $c == smtptap-writer ]] || continue
		st=$(<"$d/stat") 2>/dev/null || return 1
		st=${st##*) }
		# shellcheck disable=SC2086
		set -- $st
		echo $((${12} + ${13}))
		return 0
	done
	return 1
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
$HAPROXY_NBTHREAD_LINE
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
SMTPTAP_ARGS=()
SMTPTAP_EXTRA=() # -v for the forging-counter run
start_smtptap() {
	local t=$1 sp=$2 i
	"$SMTPTAP" proxy --listen 127.0.0.1:0 --upstream "127.0.0.1:$sp" \
		--db "$t/bench.db" "${SMTPTAP_ARGS[@]}" >"$t/relay.log" 2>&1 &
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

# smtptap with 100 rules that never match the traffic (a fixed seed: the
# file has a probability rule, which must not fire either).
start_smtptap_rules() {
	local saved=("${SMTPTAP_ARGS[@]}") rc
	SMTPTAP_ARGS+=(--rules "$BENCH_RULES" --rules-seed 1)
	start_smtptap "$@"
	rc=$?
	SMTPTAP_ARGS=("${saved[@]}")
	return $rc
}

# ---- TLS: the test PKI, the stunnel converters, the TLS relays ----
PKI=""
# The bench CA and leaf in $WORK/pki (see tools/bench/tls.sh).
make_pki() {
	bench_tls_make_pki "$WORK/pki" "$BENCH_TLS_KEY" || {
		warn "making the test PKI failed: $(tail -c 300 "$WORK/pki/openssl.log" | tr '\n' ' ')"
		return 1
	}
	PKI=$WORK/pki
}
# t role accept_port connect_port -> STUNNEL_PID (the configuration: see
# bench_tls_stunnel_conf in tools/bench/tls.sh).
start_stunnel() {
	local t=$1 role=$2 ap=$3 cp=$4 conf=$1/stunnel-$2.conf
	bench_tls_stunnel_conf "$role" "$ap" "$cp" "$PKI" "$BENCH_TLS_RESUME" >"$conf"
	stunnel "$conf" >"$t/stunnel-$role.log" 2>&1 &
	STUNNEL_PID=$!
	PIDS+=("$STUNNEL_PID")
	wait_listen "$STUNNEL_PID" "$ap" 10
}
start_direct_tls() {
	RELAY_PID=""
	RELAY_PORT=$2
}
# The backend verifies the stunnel server's certificate like smtptap does
# (chain from the bench CA, name: localhost; smtptap checks 127.0.0.1, the
# leaf has both) and reuses its TLS session to the server (haproxy's
# default; smtptap resumes too) unless BENCH_TLS_RESUME=0.
start_haproxy_tls() {
	local t=$1 sp=$2 p reuse=""
	p=$(free_port) || return 1
	[[ $BENCH_TLS_RESUME == 0 ]] && reuse=" no-ssl-reuse"
	cat >"$t/haproxy.cfg" <<EOF
global
	maxconn 4096
$HAPROXY_NBTHREAD_LINE
defaults
	mode tcp
	maxconn 4096
	timeout connect 5s
	timeout client 120s
	timeout server 120s
frontend smtp_in
	bind 127.0.0.1:$p ssl crt $PKI/leaf-full.pem
	default_backend smtp_sink
backend smtp_sink
	server sink 127.0.0.1:$sp ssl verify required ca-file $PKI/ca.pem verifyhost localhost$reuse
EOF
	haproxy -db -f "$t/haproxy.cfg" >"$t/relay.log" 2>&1 &
	RELAY_PID=$!
	PIDS+=("$RELAY_PID")
	RELAY_PORT=$p
	wait_listen "$RELAY_PID" "$p" 10
}
# smtptap forges with the bench CA (a copy in --ca-dir) so that the stunnel
# client verifies smtptap and haproxy against the same CA.
start_smtptap_tls() {
	bench_tls_smtptap_args "$1/ca" "$PKI" || return 1
	SMTPTAP_ARGS=("${BENCH_TLS_SMTPTAP_ARGS[@]}" "${SMTPTAP_EXTRA[@]}")
	start_smtptap "$@"
}

# ---- one measurement: workload relay rep -> appends a line to $RESULTS ----
# rep "probe" (TLS workloads, smtptap-tls only): a short run with smtptap -v
# whose only product is smtptap's forging counters; no warm-up, so the first
# connection forges and the others should hit the cache.
FAILURES=0
PROBE_MSGS=20
measure() {
	local w=$1 relay=$2 rep=$3
	local t="$WORK/$w-$relay-$rep" sp="" sink_pid="" n s0 s1 src_pid src_rc wall="" c0="" c1="" cpu="" rss=""
	local flush="" db_rows="" db_bytes="" sink_msgs status=ok note="" args cpu_all=""
	local b0 b1 k0 k1 src_ticks="" other="" sink_ticks=""
	local tls=${W_TLS[$w]} up="" src_port="" ss_pid="" sc_pid="" ssp="" scp="" warm=0 wout
	local sc0="" sc1="" ss0="" ss1="" sc_ticks="" ss_ticks="" tls_sessions="" forge="" sess=${W_SESS[$w]} expect
	local dbargs _sessions _tls_both _resumed wr0="" wr1="" wr_ticks=""
	mkdir -p "$t"
	n=${COUNT[$w]}
	[[ $relay == aiosmtpd ]] && n=${COUNT_AIOSMTPD[$w]}
	SMTPTAP_EXTRA=()
	if [[ $rep == probe ]]; then
		n=$PROBE_MSGS
		((sess > 10)) && sess=10
		SMTPTAP_EXTRA=(-v)
	else
		wait_quiet
	fi

	sp=$(free_port) || { warn "no free port"; return 1; }
	smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$sp" 1024 >"$t/sink.out" 2>"$t/sink.err" &
	sink_pid=$!
	PIDS+=("$sink_pid")
	if ! wait_listen "$sink_pid" "$sp" 10; then
		status=fail note="smtp-sink did not start: $(tail -c 300 "$t/sink.err" | tr '\n\t' '  ')"
	fi
	up=$sp
	if [[ $status == ok && $tls == 1 ]]; then
		ssp=$(free_port) || { warn "no free port"; return 1; }
		if start_stunnel "$t" server "$ssp" "$sp"; then
			up=$ssp
		else
			status=fail note="stunnel (server) did not start: $(tail -c 300 "$t/stunnel-server.log" | tr '\n\t' '  ')"
		fi
		ss_pid=$STUNNEL_PID
	fi

	RELAY_PID="" RELAY_PORT=""
	if [[ $status == ok ]] && ! "start_${relay//-/_}" "$t" "$up"; then
		status=fail note="$relay did not start: $(tail -c 300 "$t/relay.log" 2>/dev/null | tr '\n\t' '  ')"
	fi
	src_port=$RELAY_PORT
	if [[ $status == ok && $tls == 1 ]]; then
		scp=$(free_port) || { warn "no free port"; return 1; }
		if start_stunnel "$t" client "$scp" "$RELAY_PORT"; then
			src_port=$scp
		else
			status=fail note="stunnel (client) did not start: $(tail -c 300 "$t/stunnel-client.log" | tr '\n\t' '  ')"
		fi
		sc_pid=$STUNNEL_PID
	fi
	# TLS: one message before the measurement, so that smtptap has forged
	# (and cached) its certificate and every relay has served a handshake.
	if [[ $status == ok && $tls == 1 && $rep != probe ]]; then
		if wout=$(timeout -k 5 30 smtp-source -s 1 -m 1 -l "${W_SIZE[$w]}" -f bench@example.com \
			-t sink@example.com -M bench.example "127.0.0.1:$src_port" 2>&1); then
			warm=1
		else
			status=fail note="warm-up message failed: $(echo "$wout" | tail -c 300 | tr '\n\t' '  ')"
		fi
	fi

	if [[ $status == ok ]]; then
		args=(-s "$sess" -m "$n" -l "${W_SIZE[$w]}" -f bench@example.com
			-t sink@example.com -M bench.example)
		[[ ${W_REUSE[$w]} == 1 ]] && args+=(-d)
		[[ -n $RELAY_PID ]] && c0=$(cpu_ticks "$RELAY_PID")
		[[ $relay == smtptap* ]] && wr0=$(writer_ticks "$RELAY_PID")
		[[ -n $sc_pid ]] && sc0=$(cpu_ticks "$sc_pid") && ss0=$(cpu_ticks "$ss_pid")
		k0=$(cpu_ticks "$sink_pid")
		b0=$(sys_busy_ticks)
		s0=$EPOCHREALTIME
		timeout -k 5 "$BENCH_TIMEOUT" /usr/bin/time -f '%U %S' -o "$t/source.time" \
			smtp-source "${args[@]}" "127.0.0.1:$src_port" >"$t/source.out" 2>&1 &
		src_pid=$!
		PIDS+=("$src_pid")
		wait "$src_pid"
		src_rc=$?
		s1=$EPOCHREALTIME
		wall=$(awk -v a="$s0" -v b="$s1" 'BEGIN{printf "%.4f", b-a}')
		b1=$(sys_busy_ticks)
		k1=$(cpu_ticks "$sink_pid")
		[[ -n $k0 && -n $k1 ]] && sink_ticks=$((k1 - k0))
		if [[ -n $sc_pid ]]; then
			if alive "$sc_pid" && alive "$ss_pid"; then
				sc1=$(cpu_ticks "$sc_pid") && ss1=$(cpu_ticks "$ss_pid")
				sc_ticks=$((sc1 - sc0)) ss_ticks=$((ss1 - ss0))
			else
				status=fail note="stunnel died during the run: $(tail -c 300 "$t"/stunnel-*.log | tr '\n\t' '  ')"
			fi
		fi
		if [[ $src_rc == 124 || $src_rc == 137 ]]; then
			status=fail note="smtp-source timed out after ${BENCH_TIMEOUT}s"
		elif [[ $src_rc != 0 ]]; then
			status=fail note="smtp-source exit $src_rc: $(tail -c 300 "$t/source.out" | tr '\n\t' '  ')"
		fi
		if [[ -n $RELAY_PID ]]; then
			if alive "$RELAY_PID"; then
				c1=$(cpu_ticks "$RELAY_PID")
				[[ -n $wr0 ]] && wr1=$(writer_ticks "$RELAY_PID") && wr_ticks=$((wr1 - wr0))
				rss=$(vm_hwm_kb "$RELAY_PID")
				cpu=$((c1 - c0))
			else
				status=fail note="$relay died during the run: $(tail -c 300 "$t/relay.log" | tr '\n\t' '  ')"
			fi
		fi
		# CPUs used by everything but client, converters, relay and sink
		# during the run.
		src_ticks=$(awk -v k="$CLK_TCK" 'NF == 2 && $1 ~ /^[0-9.]+$/ {printf "%.0f", ($1 + $2) * k}' \
			"$t/source.time" 2>/dev/null)
		if [[ -n $src_ticks && -n $sink_ticks ]]; then
			other=$(awk -v d=$((b1 - b0 - ${cpu:-0} - sink_ticks - src_ticks - ${sc_ticks:-0} - ${ss_ticks:-0})) \
				-v k="$CLK_TCK" -v w="$wall" 'BEGIN{o = d/k/w; printf "%.2f", o < 0 ? 0 : o}')
		fi
	fi

	if [[ -n $RELAY_PID ]]; then
		# Stop the relay; for smtptap this time is the final DB flush.
		if alive "$RELAY_PID"; then
			stop_pid "$RELAY_PID" TERM 60
			flush=$STOP_SECS
			[[ -n ${c0:-} && -n $STOP_TICKS ]] && cpu_all=$((STOP_TICKS - c0))
			[[ -n $cpu && -z $cpu_all ]] && cpu_all=$cpu
			if [[ $relay == smtptap* ]]; then
				if [[ $STOP_KILLED == 1 ]]; then
					status=fail note="smtptap did not exit within 60s of SIGTERM (killed)"
				elif [[ $STOP_RC != 0 ]]; then
					status=fail note="smtptap exit status $STOP_RC after SIGTERM: $(tail -c 300 "$t/relay.log" | tr '\n\t' '  ')"
				fi
			fi
		fi
	fi
	[[ -n $sc_pid ]] && stop_pid "$sc_pid" TERM 5
	[[ -n $ss_pid ]] && stop_pid "$ss_pid" TERM 5
	expect=$((n + warm))
	if [[ $relay == smtptap* && -e $t/bench.db ]]; then
		dbargs=("$t/bench.db")
		[[ $tls == 1 ]] && dbargs+=(--tls)
		db_rows=$($PY "$ROOT/tools/bench/dbcount.py" "${dbargs[@]}")
		db_bytes=$(du -cb "$t"/bench.db* 2>/dev/null | awk 'END{print $1}')
		if [[ $tls == 1 && $db_rows =~ ^[0-9]+\ [0-9]+\ [0-9]+\ [0-9]+$ ]]; then
			# messages, sessions, sessions with TLS recorded on both legs,
			# sessions whose upstream handshake resumed
			read -r db_rows _sessions _tls_both _resumed <<<"$db_rows"
			tls_sessions="$_tls_both/$_sessions"
			if ((_tls_both < _sessions)); then
				loud "smtptap $w rep $rep: only $_tls_both of $_sessions sessions have TLS recorded on both legs"
				status=fail note="TLS recorded on both legs in $_tls_both of $_sessions sessions"
			elif ((_resumed > 0 && BENCH_TLS_RESUME == 0)); then
				# The stunnel server refuses resumption: a resumed handshake
				# means the setup is not what the report says it is.
				loud "smtptap $w rep $rep: $_resumed upstream handshakes resumed; every one should be full"
				status=fail note="$_resumed of $_sessions upstream handshakes resumed"
			fi
			tls_sessions+="/$_resumed"
		fi
		if [[ ! $db_rows =~ ^[0-9]+$ ]]; then
			loud "smtptap $w rep $rep: cannot count recorded messages: $db_rows"
			status=fail note="DB unreadable: $db_rows"
			db_rows=""
		elif ((db_rows < expect)); then
			loud "smtptap $w rep $rep: ONLY $db_rows OF $expect MESSAGES RECORDED in the messages table"
			status=fail note="recorded $db_rows of $expect messages"
		fi
		if [[ $relay == smtptap-rules ]]; then
			# Rules that fire would measure something else.
			fired=$($PY "$ROOT/tools/bench/dbcount.py" "$t/bench.db" --rule-events)
			if [[ $fired != 0 ]]; then
				loud "smtptap-rules $w rep $rep: rules fired or changed events ($fired); nomatch.rules must not match"
				status=fail note="rule events: $fired"
			fi
		fi
	fi
	if [[ $relay == smtptap-tls ]]; then
		forge=$(grep -i 'forged' "$t/relay.log" 2>/dev/null | grep -i 'cache' | tail -1 | tr '\t' ' ' | cut -c1-300)
	fi
	stop_pid "$sink_pid" TERM 5
	sink_msgs=$(tr '\r' '\n' <"$t/sink.out" | grep -oE 'mesg=[0-9]+' | tail -1 | cut -d= -f2)
	if [[ $status == ok && ${sink_msgs:-0} -lt $expect ]]; then
		status=fail note="smtp-sink received ${sink_msgs:-0} of $expect messages"
	fi
	if [[ $status != ok ]]; then
		FAILURES=$((FAILURES + 1))
		loud "$w/$relay rep $rep FAILED: $note (logs: $t)"
		BENCH_KEEP=1
	fi
	# workload relay rep status msgs wall cpu_ticks clk_tck rss_kb flush_s db_rows
	# db_bytes sink_msgs note cpu_ticks_incl_stop other_cpus src_ticks sink_ticks
	# stunnel_client_ticks stunnel_server_ticks warmup_msgs tls_sessions forge_line
	# writer_ticks (smtptap's store writer thread until smtp-source ended)
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
		"$w" "$relay" "$rep" "$status" "$n" "${wall:-}" "${cpu:-}" "$CLK_TCK" "${rss:-}" \
		"$flush" "$db_rows" "$db_bytes" "${sink_msgs:-}" "$note" "$cpu_all" "$other" \
		"${src_ticks:-}" "${sink_ticks:-}" "${sc_ticks:-}" "${ss_ticks:-}" "$warm" "$tls_sessions" "$forge" "$wr_ticks" >>"$RESULTS"
	if [[ $status == ok ]]; then
		printf 'bench: %s %-11s rep %s: %6d msgs in %7.3fs = %9.1f msg/s%s%s\n' "$w" "$relay" "$rep" "$n" "$wall" \
			"$(awk -v n="$n" -v t="$wall" 'BEGIN{print n/t}')" \
			"${RELAY_PID:+, cpu $(awk -v c="$cpu_all" -v k="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.0f", c/k/n*1e6}') us/msg${wr_ticks:+ (writer $(awk -v c="$wr_ticks" -v k="$CLK_TCK" -v n="$n" 'BEGIN{printf "%.0f", c/k/n*1e6}'))}, rss $((rss / 1024)) MB}${flush:+, stop ${flush}s}${other:+, other load $other CPUs}" \
			"${sc_ticks:+, stunnel $(awk -v c="$sc_ticks" -v s="$ss_ticks" -v k="$CLK_TCK" -v n="$n" -v w="$wall" \
				'BEGIN{printf "%.0f+%.0f us/msg (%.2f+%.2f CPUs)", c/k/n*1e6, s/k/n*1e6, c/k/w, s/k/w}')}${forge:+; $forge}"
	fi
}

# ---- run ----
declare -A COUNT COUNT_AIOSMTPD
scaled() { awk -v c="$1" -v s="$BENCH_SCALE" 'BEGIN{n=int(c*s+0.5); print n<1?1:n}'; }
for w in $RUN_WORKLOADS; do
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
	printf 'haproxy_threads\t%s\n' "${BENCH_HAPROXY_THREADS:-default ($(nproc) on this machine)}"
	printf 'aiosmtpd\t%s\n' "$($PY -m aiosmtpd --version 2>/dev/null)"
	printf 'python\t%s\n' "$($PY --version 2>&1)"
	printf 'postfix\t%s\n' "$(postconf -d mail_version 2>/dev/null | sed 's/.*= *//')"
	if ((ANY_TLS)); then
		printf 'stunnel\t%s\n' "$(stunnel -version 2>&1 | grep -m1 -oE 'stunnel [0-9.]+')"
		printf 'openssl\t%s\n' "$(openssl version 2>/dev/null | cut -d' ' -f1-2)"
		printf 'tls_key\t%s\n' "$([[ $BENCH_TLS_KEY == rsa ]] && echo "RSA 2048" || echo "ECDSA P-256")"
		printf 'tls_resume\t%s\n' "$BENCH_TLS_RESUME"
	fi
	v=$("$SMTPTAP" --version 2>/dev/null) || v=""
	[[ $v =~ ^smtptap\ [^[:space:]]+ ]] && v=${BASH_REMATCH[0]#smtptap } || v="$(cat "$ROOT/VERSION" 2>/dev/null) (VERSION file)"
	printf 'smtptap\t%s\n' "$v"
	printf 'relays\t%s\n' "$BENCH_RELAYS"
	printf 'workloads\t%s\n' "$RUN_WORKLOADS"
	printf 'doc_parts\t%s\n' "$DOC_PARTS"
	printf 'repeat\t%s\n' "$BENCH_REPEAT"
	printf 'scale\t%s\n' "$BENCH_SCALE"
	printf 'quick\t%s\n' "$BENCH_QUICK"
	printf 'env\t%s\n' "$CALLER_ENV"
	for w in $RUN_WORKLOADS; do
		printf 'workload.%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$w" "${COUNT[$w]}" "${W_SESS[$w]}" \
			"${W_REUSE[$w]}" "${W_SIZE[$w]}" "${W_DESC[$w]}" "${COUNT_AIOSMTPD[$w]}" "${W_TLS[$w]}" \
			"$(relays_for "$w")"
	done
} >"$META"

if ((ANY_TLS)); then
	make_pki || die "cannot make the test PKI (openssl CLI)"
fi
echo "bench: relays: $BENCH_RELAYS; workloads: $RUN_WORKLOADS; repeat $BENCH_REPEAT;" \
	"$([[ $BENCH_QUICK == 1 ]] && echo "QUICK mode" || echo "scale $BENCH_SCALE")"
for w in $RUN_WORKLOADS; do
	relays=$(relays_for "$w")
	echo "bench: workload $w: ${W_DESC[$w]}; ${COUNT[$w]} messages$([[ " $relays " == *" aiosmtpd "* ]] && echo " (aiosmtpd ${COUNT_AIOSMTPD[$w]})"); relays: $relays"
	for ((rep = 1; rep <= BENCH_REPEAT; rep++)); do
		for relay in $relays; do
			measure "$w" "$relay" "$rep"
		done
	done
	# smtptap's forging counters, when its measured runs worked but did not
	# log them.
	if [[ " $relays " == *" smtptap-tls "* ]] &&
		awk -F'\t' -v w="$w" '$1 == w && $2 == "smtptap-tls" {if ($4 == "ok") ok = 1; if ($23 != "") f = 1}
			END {exit !(ok && !f)}' "$RESULTS"; then
		measure "$w" smtptap-tls probe
	fi
done

printf 'loadavg_end\t%s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"
printf 'idle\t%s\t%s\n' "$BENCH_IDLE_WAIT" "$BENCH_IDLE_LOAD" >>"$META"
report_args=(--results "$RESULTS" --meta "$META")
[[ -n $BENCH_DOC ]] && report_args+=(--doc "$BENCH_DOC" --parts "$DOC_PARTS")
$PY "$ROOT/tools/bench/report.py" "${report_args[@]}" || FAILURES=$((FAILURES + 1))
echo "bench: raw results in $RESULTS"
[[ -n $BENCH_DOC ]] && echo "bench: wrote the $DOC_PARTS part(s) of $BENCH_DOC"
if ((FAILURES > 0)); then
	loud "$FAILURES measurement(s) FAILED - see the warnings above"
	exit 1
fi
exit 0
