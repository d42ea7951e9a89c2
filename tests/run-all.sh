#!/usr/bin/env bash
# tests/run-all.sh - every smtptap test, with one summary line at the end.
#
#   bash tests/run-all.sh                  everything (what `make check` runs)
#   bash tests/run-all.sh --only unit      unit tests (+ valgrind), normal build
#   bash tests/run-all.sh --only e2e       end-to-end tests, normal build
#   bash tests/run-all.sh --only asan      unit + e2e again under ASan+UBSan
#   bash tests/run-all.sh --only fuzz      each libFuzzer target briefly
#
# Sections of a full run:
#   unit       make all unit-bins; each build/tests/test_* (cmocka; test_alloc_fail
#              is the allocation-failure injection, see tests/fuzz/README.md)
#   e2e        pytest tests/e2e with SMTPTAP_BIN=build/smtptap
#   valgrind   each unit binary under valgrind (one count per binary)
#   asan-unit  make O=build/asan SAN=1 CC=clang all unit-bins (clang, so both compilers build warning-free); unit tests again
#   asan-e2e   pytest again with SMTPTAP_BIN=build/asan/smtptap, SMTPTAP_SANITIZER=1
#   fuzz       make fuzz-bins; each fuzzer FUZZ_SECONDS (default 10) on a copy
#              of its corpus, with its dictionary and -max_len=FUZZ_MAX_LEN
#              (200000); a crash, leak or UBSan report is a failure
# (coverage is separate: make coverage, tools/coverage.sh)
#
# Parallelism (the phases themselves run one after the other):
#   JOBS       make -j, and how many unit binaries, valgrind runs or fuzzers
#              run at once (default: nproc)
#   E2E_JOBS   pytest-xdist workers for each e2e section (default 2; 1 runs
#              pytest without xdist).  The suite mostly waits (on proxies,
#              peers, timeouts), so two workers nearly halve it.
# The summary gives each phase's wall-clock seconds and the load average.
#
# A build failure counts as a failure (never as "0 tests").  The last line
# is always "N passed, N failed, N skipped"; the exit status is non-zero if
# anything failed.
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=/usr/bin/python3
FUZZ_SECONDS=${FUZZ_SECONDS:-10}
FUZZ_MAX_LEN=${FUZZ_MAX_LEN:-200000}
# Fuzz targets left out (counted as skipped, not passed), space-separated.
FUZZ_SKIP=${FUZZ_SKIP-}
# Safety nets only (a hung run must end); no test relies on them.
E2E_TIMEOUT=${E2E_TIMEOUT:-1500}
UNIT_TIMEOUT=${UNIT_TIMEOUT:-300}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 1)}
E2E_JOBS=${E2E_JOBS:-2}

ONLY=all
while [ $# -gt 0 ]; do
	case "$1" in
	--only)
		[ $# -ge 2 ] || { echo "run-all.sh: --only needs unit|e2e|asan|fuzz" >&2; exit 2; }
		ONLY=$2
		shift 2
		;;
	--only=*)
		ONLY=${1#--only=}
		shift
		;;
	-h | --help)
		sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "run-all.sh: unknown argument '$1' (try --help)" >&2
		exit 2
		;;
	esac
done
case "$ONLY" in
all | unit | e2e | asan | fuzz) ;;
*) echo "run-all.sh: --only takes unit, e2e, asan or fuzz, not '$ONLY'" >&2; exit 2 ;;
esac

TMP=$(mktemp -d "${TMPDIR:-/tmp}/smtptap-check.XXXXXX") || exit 2
trap 'rm -rf "$TMP"' EXIT
START=$(date +%s)

TOTAL_P=0 TOTAL_F=0 TOTAL_S=0
SUMMARY=""
FAILED_ITEMS=""
# Wall-clock and CPU seconds per phase (a phase runs from one banner to the
# next), printed in the summary so a slow run shows where its time went; on
# a shared machine the CPU seconds vary less than the wall-clock ones.
TIMES="" PHASE="" PHASE_T0=$START PHASE_CPU0=0

# record SECTION PASSED FAILED SKIPPED
record() {
	TOTAL_P=$((TOTAL_P + $2))
	TOTAL_F=$((TOTAL_F + $3))
	TOTAL_S=$((TOTAL_S + $4))
	SUMMARY="${SUMMARY}$(printf '  %-10s %5d passed, %5d failed, %5d skipped' "$1" "$2" "$3" "$4")
"
	echo "== $1: $2 passed, $3 failed, $4 skipped"
}

# pool_wait N: return once fewer than N of our background jobs run (each
# job records its own outcome in a file; the caller reports them in order).
POOL=0
pool_wait() {
	while [ "$POOL" -ge "$1" ]; do
		wait -n
		POOL=$((POOL - 1))
	done
}

# pool_drain: wait for every background job
pool_drain() {
	wait
	POOL=0
}

fail_item() {
	FAILED_ITEMS="${FAILED_ITEMS}  $1
"
}

# cpu_now: CPU_NOW = user+sys seconds of every child waited for so far
# (bash's `times`, run in this shell: a subshell would count its own)
cpu_now() {
	times >"$TMP/times"
	CPU_NOW=$(awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { gsub(",", ".", $i); split($i, a, /[ms]/);
		s += a[1] * 60 + a[2] } printf "%d\n", s }' "$TMP/times")
}

# phase_end: close the running phase's timer (banner and the summary call it)
phase_end() {
	local now
	now=$(date +%s)
	cpu_now
	[ -n "$PHASE" ] && TIMES="${TIMES}$(printf '  %-40s %5d s, %5d s CPU' "$PHASE" $((now - PHASE_T0)) \
		$((CPU_NOW - PHASE_CPU0)))
"
	PHASE="" PHASE_T0=$now PHASE_CPU0=$CPU_NOW
}

banner() {
	phase_end
	PHASE="$*"
	echo
	echo "==================== $* ($(($(date +%s) - START)) s) ===================="
}

# build SECTION LOG MAKE-ARGS...: returns 0 if make succeeded; otherwise
# records one failure for the section and prints the end of the log.
build() {
	local section=$1 log=$2
	shift 2
	echo "+ make -j$JOBS $*"
	if make -j"$JOBS" "$@" >"$log" 2>&1; then
		return 0
	fi
	tail -n 40 "$log"
	echo "!! build failed: make $*"
	fail_item "$section: build failed (make $*)"
	record "$section" 0 1 0
	return 1
}

# unit_bins DIR: the cmocka test executables under DIR
unit_bins() {
	local f
	for f in "$1"/test_*; do
		[ -f "$f" ] && [ -x "$f" ] || continue
		case "$f" in *.d | *.o) continue ;; esac
		echo "$f"
	done
}

# run_unit SECTION DIR: every cmocka binary (JOBS at once: each has its own
# temporary directories), counts from its output
run_unit() {
	local section=$1 dir=$2 p=0 f=0 s=0 bin out rc np nf ns any=0
	for bin in $(unit_bins "$dir"); do
		out="$TMP/$(basename "$bin").$section.out"
		pool_wait "$JOBS"
		(
			timeout -k 10 "$UNIT_TIMEOUT" "$bin" >"$out" 2>&1
			echo $? >"$out.rc"
		) &
		POOL=$((POOL + 1))
	done
	pool_drain
	for bin in $(unit_bins "$dir"); do
		any=1
		out="$TMP/$(basename "$bin").$section.out"
		rc=$(cat "$out.rc" 2>/dev/null || echo 125)
		np=$(sed -n 's/^\[  PASSED  \] \([0-9][0-9]*\) test(s)\..*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
		nf=$(sed -n 's/^\[  FAILED  \] \([0-9][0-9]*\) test(s).*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
		ns=$(sed -n 's/^\[  SKIPPED \] \([0-9][0-9]*\) test(s).*/\1/p' "$out" | awk '{s+=$1} END {print s+0}')
		if [ "$rc" -ne 0 ] && [ "$nf" -eq 0 ]; then
			# crashed, sanitizer report, group setup failure, timeout: still a failure
			nf=1
		fi
		if [ "$rc" -eq 0 ] && [ "$np" -eq 0 ] && [ "$ns" -eq 0 ]; then
			echo "!! $bin ran no tests"
			nf=$((nf + 1))
		fi
		if [ "$nf" -gt 0 ]; then
			echo "!! $bin: exit $rc, $nf failed"
			grep -E '^\[  (FAILED|ERROR) |ERROR|Sanitizer|runtime error' "$out" | head -n 40
			tail -n 20 "$out"
			fail_item "$section: $(basename "$bin") (exit $rc)"
		else
			if [ "$ns" -gt 0 ]; then
				echo "   $(basename "$bin"): $np passed, $ns skipped"
			else
				echo "   $(basename "$bin"): $np passed"
			fi
		fi
		p=$((p + np)) f=$((f + nf)) s=$((s + ns))
	done
	if [ "$any" -eq 0 ]; then
		echo "!! no unit test binaries in $dir"
		fail_item "$section: no unit test binaries in $dir"
		f=$((f + 1))
	fi
	record "$section" "$p" "$f" "$s"
}

# run_valgrind SECTION DIR: one count per binary
run_valgrind() {
	local section=$1 dir=$2 p=0 f=0 bin out rc any=0
	if ! command -v valgrind >/dev/null; then
		echo "!! valgrind is not installed (tools/install-deps.sh installs it)"
		fail_item "$section: valgrind not installed"
		record "$section" 0 1 0
		return
	fi
	# glibc's dynamic loader (dlopen of iconv's gconv modules) reads past a
	# string with a word-sized strncmp: a known false positive, not ours.
	cat >"$TMP/valgrind.supp" <<'SUPP'
{
   glibc-rtld-is_dst-strncmp-overread
   Memcheck:Addr8
   fun:strncmp
   fun:is_dst
   ...
}
SUPP
	# JOBS at once: valgrind is CPU-bound and single-threaded
	for bin in $(unit_bins "$dir"); do
		out="$TMP/$(basename "$bin").valgrind.out"
		pool_wait "$JOBS"
		(
			t0=$(date +%s)
			timeout -k 10 $((UNIT_TIMEOUT * 4)) valgrind --suppressions="$TMP/valgrind.supp" --leak-check=full \
				--errors-for-leak-kinds=definite,indirect --error-exitcode=99 "$bin" >"$out" 2>&1
			echo $? >"$out.rc"
			echo $(($(date +%s) - t0)) >"$out.secs"
		) &
		POOL=$((POOL + 1))
	done
	pool_drain
	for bin in $(unit_bins "$dir"); do
		any=1
		out="$TMP/$(basename "$bin").valgrind.out"
		rc=$(cat "$out.rc" 2>/dev/null || echo 125)
		if [ "$rc" -eq 0 ]; then
			p=$((p + 1))
			echo "   $(basename "$bin"): clean ($(cat "$out.secs") s)"
		else
			f=$((f + 1))
			echo "!! $(basename "$bin") under valgrind: exit $rc"
			grep -E '^==[0-9]+== (Invalid|Conditional|Use of|Syscall|Mismatched|Source and|Argument|.*definitely|.*indirectly|   at|   by)' "$out" | head -n 60
			tail -n 15 "$out"
			fail_item "$section: $(basename "$bin") (exit $rc)"
		fi
	done
	if [ "$any" -eq 0 ]; then
		fail_item "$section: no unit test binaries in $dir"
		f=$((f + 1))
	fi
	record "$section" "$p" "$f" 0
}

# run_e2e SECTION BIN SANITIZER(0|1)
run_e2e() {
	local section=$1 bin=$2 san=$3 xml="$TMP/$1.xml" rc counts par=""
	if [ ! -x "$bin" ]; then
		echo "!! $bin does not exist"
		fail_item "$section: $bin missing"
		record "$section" 0 1 0
		return
	fi
	if [ ! -x "$PY" ]; then
		echo "!! $PY not found (Debian python3 with python3-pytest and python3-aiosmtpd)"
		fail_item "$section: $PY missing"
		record "$section" 0 1 0
		return
	fi
	# pytest-xdist: tests that share a module fixture carry an xdist_group
	# mark and stay on one worker (--dist loadgroup); each worker has its
	# own temporary directories under --basetemp, ports are picked at run
	# time, and the junit report (which the counts below read) is merged.
	if [ "$E2E_JOBS" -gt 1 ]; then
		if "$PY" -c 'import xdist' 2>/dev/null; then
			par="-n $E2E_JOBS --dist loadgroup"
		else
			echo "   (pytest-xdist is not installed: one worker; tools/install-deps.sh installs it)"
		fi
	fi
	echo "+ SMTPTAP_BIN=$bin SMTPTAP_SANITIZER=$san $PY -m pytest $par tests/e2e"
	(
		cd "$ROOT/tests/e2e" || exit 2
		export SMTPTAP_BIN="$ROOT/$bin"
		if [ "$san" = 1 ]; then
			export SMTPTAP_SANITIZER=1
		else
			unset SMTPTAP_SANITIZER
		fi
		export PYTHONDONTWRITEBYTECODE=1
		# pytest's own temp directories go under our scratch directory
		# shellcheck disable=SC2086 # $par is words
		timeout -k 30 "$E2E_TIMEOUT" "$PY" -m pytest $par -q -p no:cacheprovider -rfEs --durations=10 \
			--basetemp="$TMP/$section-tmp" --junitxml="$xml" .
	)
	rc=$?
	counts=$("$PY" - "$xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:  # no report: pytest crashed or timed out
    print("0 0 0 -")
    sys.exit(0)
status = {}
rank = {"passed": 0, "skipped": 1, "failed": 2}
for tc in root.iter("testcase"):
    key = (tc.get("classname"), tc.get("name"))
    tags = {c.tag for c in tc}
    s = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
    if key not in status or rank[s] > rank[status[key]]:
        status[key] = s
v = list(status.values())
print(v.count("passed"), v.count("failed"), v.count("skipped"), "ok")
EOF
)
	set -- $counts
	local p=$1 f=$2 s=$3 ok=$4
	if [ "$ok" != ok ]; then
		echo "!! pytest left no report (exit $rc)"
		f=$((f + 1))
		fail_item "$section: pytest exited $rc without a report"
	elif [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "!! pytest exited $rc with no failed test (collection error, timeout, interrupted?)"
		f=$((f + 1))
		fail_item "$section: pytest exited $rc"
	elif [ "$p" -eq 0 ] && [ "$f" -eq 0 ]; then
		echo "!! pytest ran no tests"
		f=$((f + 1))
		fail_item "$section: no tests ran"
	fi
	if [ "$f" -gt 0 ] && [ "$ok" = ok ]; then
		"$PY" - "$xml" "$section" <<'EOF' >>"$TMP/failed-e2e"
import sys
import xml.etree.ElementTree as ET
for tc in ET.parse(sys.argv[1]).getroot().iter("testcase"):
    if any(c.tag in ("failure", "error") for c in tc):
        print("%s: %s::%s" % (sys.argv[2], tc.get("classname"), tc.get("name")))
EOF
		FAILED_ITEMS="${FAILED_ITEMS}$(sed 's/^/  /' "$TMP/failed-e2e")
"
		: >"$TMP/failed-e2e"
	fi
	record "$section" "$p" "$f" "$s"
}

# run_fuzz: each fuzzer on a scratch copy of its corpus, JOBS at once (each
# has its own work directory; fuzz_session its own /dev/shm scratch and port)
run_fuzz() {
	local p=0 f=0 s=0 bin name corpus work out rc secs any=0 launched="" order
	# Biggest kept corpus first: replaying it outlasts FUZZ_SECONDS
	# (fuzz_session's takes most of the phase), the others fit beside it.
	order=$(for bin in build/fuzz/fuzz_*; do
		n=$(basename "$bin")
		echo "$(du -s --apparent-size "tests/fuzz/corpus/${n#fuzz_}" 2>/dev/null | cut -f1) $bin"
	done | sort -k1,1nr -k2 | cut -d' ' -f2)
	for bin in $order; do
		[ -f "$bin" ] && [ -x "$bin" ] || continue
		case "$bin" in *.d | *.o) continue ;; esac
		any=1
		name=$(basename "$bin")
		case " $FUZZ_SKIP " in
		*" $name "*)
			echo "   $name: skipped (FUZZ_SKIP)"
			s=$((s + 1))
			continue
			;;
		esac
		corpus="tests/fuzz/corpus/${name#fuzz_}"
		work="$TMP/fuzz-$name"
		mkdir -p "$work/corpus" "$work/artifacts"
		if [ -d "$corpus" ]; then
			cp -R "$corpus/." "$work/corpus/"
		else
			echo "   (no seed corpus at $corpus: starting empty)"
		fi
		out="$work/log"
		dict="tests/fuzz/dict/${name#fuzz_}.dict"
		if [ ! -f "$dict" ]; then
			echo "!! $name: no dictionary at $dict"
			fail_item "fuzz: $name has no dictionary"
			f=$((f + 1))
			continue
		fi
		pool_wait "$JOBS"
		# -max_len above the 64 KiB bounds so the caps are reached; UBSan
		# is built fatal (-fno-sanitize-recover=all), these make sure.
		# libFuzzer replays the whole corpus before -max_total_time counts
		# (fuzz_session's takes a minute on a quiet machine, several on a
		# loaded one), so the outer timeout only catches a hang; -timeout
		# flags one slow input.
		(
			t0=$(date +%s)
			ASAN_OPTIONS=abort_on_error=0:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
				timeout -k 10 $((FUZZ_SECONDS + 900)) "$bin" -max_total_time="$FUZZ_SECONDS" -timeout=120 \
				-print_final_stats=1 \
				-max_len="$FUZZ_MAX_LEN" -dict="$dict" -artifact_prefix="$work/artifacts/" "$work/corpus" >"$out" 2>&1
			echo "$? $(($(date +%s) - t0))" >"$work/rc"
		) &
		POOL=$((POOL + 1))
		launched="$launched $name"
	done
	pool_drain
	for name in $launched; do
		work="$TMP/fuzz-$name"
		out="$work/log"
		read -r rc secs 2>/dev/null <"$work/rc" || { rc=125 secs=0; }
		# A UBSan report without a crash would still be a finding.
		if [ "$rc" -eq 0 ] && ! ls "$work/artifacts" | grep -q . && ! grep -q 'runtime error' "$out"; then
			p=$((p + 1))
			echo "   $name: $(grep -E '^stat::number_of_executed_units' "$out" | awk '{print $2}') runs in $secs s, no crash"
		else
			f=$((f + 1))
			echo "!! $name: exit $rc"
			grep -E 'ERROR|SUMMARY|runtime error|Test unit written|deadly signal' "$out" | head -n 20
			tail -n 30 "$out"
			for a in "$work"/artifacts/*; do
				[ -f "$a" ] || continue
				mkdir -p build/fuzz/crashes
				cp "$a" build/fuzz/crashes/ && echo "   reproducer: build/fuzz/crashes/$(basename "$a")"
			done
			fail_item "fuzz: $name (exit $rc)"
		fi
	done
	if [ "$any" -eq 0 ]; then
		echo "!! no fuzzers in build/fuzz"
		fail_item "fuzz: no fuzz binaries"
		f=$((f + 1))
	fi
	record fuzz "$p" "$f" "$s"
}

want() {
	[ "$ONLY" = all ] || [ "$ONLY" = "$1" ]
}

# ---- normal build: unit, e2e, valgrind
if want unit || want e2e; then
	banner "build (normal)"
	targets="all unit-bins"
	[ "$ONLY" = e2e ] && targets=all
	if build build "$TMP/build.log" $targets; then
		if want unit; then
			banner "unit tests"
			run_unit unit build/tests
		fi
		if want e2e; then
			banner "end-to-end tests (build/smtptap)"
			run_e2e e2e build/smtptap 0
		fi
		if want unit; then
			banner "unit tests under valgrind"
			run_valgrind valgrind build/tests
		fi
	fi
fi

# ---- sanitizer build: unit and e2e again
if want asan; then
	banner "build (ASan+UBSan)"
	if build asan-build "$TMP/asan-build.log" O=build/asan SAN=1 CC=clang all unit-bins; then
		export ASAN_OPTIONS=abort_on_error=0:detect_leaks=1
		export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
		banner "unit tests (ASan+UBSan)"
		run_unit asan-unit build/asan/tests
		banner "end-to-end tests (build/asan/smtptap)"
		run_e2e asan-e2e build/asan/smtptap 1
		unset ASAN_OPTIONS UBSAN_OPTIONS
	fi
fi

# ---- fuzzers, briefly
if want fuzz; then
	banner "fuzz (${FUZZ_SECONDS} s each)"
	if build fuzz-build "$TMP/fuzz-build.log" fuzz-bins; then
		run_fuzz
	fi
fi

phase_end
echo
echo "==================== summary ($(($(date +%s) - START)) s, $CPU_NOW s CPU, load $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)) ===================="
printf '%s' "$TIMES"
printf '%s' "$SUMMARY"
if [ -n "$FAILED_ITEMS" ]; then
	echo "failed:"
	printf '%s' "$FAILED_ITEMS"
fi
echo "$TOTAL_P passed, $TOTAL_F failed, $TOTAL_S skipped"
[ "$TOTAL_F" -eq 0 ]
