#!/usr/bin/env bash
# tools/coverage.sh - line coverage of src/ (what `make coverage` runs).
#
# Builds with clang source-based coverage into build/cov (O=build/cov COV=1),
# then runs, each process writing its own profile (LLVM_PROFILE_FILE with %p):
#   unit   every build/cov/tests/test_*
#   e2e    the pytest suite against build/cov/smtptap (SMTPTAP_SANITIZER=1:
#          the slow-build allowances, smaller big-message test)
#   fuzz   each fuzzer built with coverage, over its kept corpus (-runs=0)
# merges the profiles with llvm-profdata and prints `llvm-cov report` for
# src/: all together, then the fuzzers alone.  HTML: build/cov/html/.
#
#   COV_E2E=0 bash tools/coverage.sh     skip the e2e suite (quick)
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
COVDIR=build/cov
PROF=$ROOT/$COVDIR/profiles
LLVM_PROFDATA=${LLVM_PROFDATA:-llvm-profdata-14}
LLVM_COV=${LLVM_COV:-llvm-cov-14}
E2E_TIMEOUT=${E2E_TIMEOUT:-2400}

for t in clang "$LLVM_PROFDATA" "$LLVM_COV"; do
	command -v "$t" >/dev/null || { echo "coverage: $t not found (tools/install-deps.sh cover)" >&2; exit 2; }
done

echo "== build (O=$COVDIR COV=1 CC=clang)"
make -s O="$COVDIR" COV=1 CC=clang all unit-bins cov-fuzz-bins >"$ROOT/$COVDIR.build.log" 2>&1 ||
	{ tail -n 40 "$ROOT/$COVDIR.build.log"; echo "coverage: build failed" >&2; exit 1; }

rm -rf "$PROF"
mkdir -p "$PROF/unit" "$PROF/e2e" "$PROF/fuzz"
status=0

echo "== unit tests"
for bin in "$COVDIR"/tests/test_*; do
	[ -x "$bin" ] && [ -f "$bin" ] || continue
	case "$bin" in *.d | *.o) continue ;; esac
	if LLVM_PROFILE_FILE="$PROF/unit/%p-%m.profraw" "$bin" >"$PROF/$(basename "$bin").log" 2>&1; then
		echo "   $(basename "$bin"): ok"
	else
		echo "!! $(basename "$bin") failed (coverage still counted): $PROF/$(basename "$bin").log"
		status=1
	fi
done

if [ "${COV_E2E:-1}" != 0 ]; then
	echo "== e2e tests (SMTPTAP_BIN=$COVDIR/smtptap)"
	(
		cd tests/e2e || exit 2
		SMTPTAP_BIN="$ROOT/$COVDIR/smtptap" SMTPTAP_SANITIZER=1 PYTHONDONTWRITEBYTECODE=1 \
			LLVM_PROFILE_FILE="$PROF/e2e/%p-%m.profraw" \
			timeout -k 30 "$E2E_TIMEOUT" /usr/bin/python3 -m pytest -q -p no:cacheprovider \
			--basetemp="$PROF/e2e-tmp" . 2>&1 | tail -n 5
		exit "${PIPESTATUS[0]}"
	) || { echo "!! e2e: failures (coverage still counted)"; status=1; }
fi

echo "== fuzzers over their kept corpora"
for bin in "$COVDIR"/fuzz/fuzz_*; do
	[ -x "$bin" ] || continue
	name=$(basename "$bin")
	corpus=tests/fuzz/corpus/${name#fuzz_}
	if LLVM_PROFILE_FILE="$PROF/fuzz/%p-%m.profraw" "$bin" -runs=0 "$corpus" >"$PROF/$name.log" 2>&1; then
		echo "   $name: $(ls "$corpus" | wc -l) inputs"
	else
		echo "!! $name failed on its corpus: $PROF/$name.log"
		status=1
	fi
done

# Every instrumented binary, so each source file's functions are found.
objs=("$COVDIR/smtptap")
for b in "$COVDIR"/tests/test_* "$COVDIR"/fuzz/fuzz_*; do
	[ -x "$b" ] && [ -f "$b" ] && case "$b" in *.d | *.o) ;; *) objs+=(-object "$b") ;; esac
done

shopt -s nullglob
all=("$PROF"/unit/*.profraw "$PROF"/e2e/*.profraw "$PROF"/fuzz/*.profraw)
fuzz=("$PROF"/fuzz/*.profraw)
[ ${#all[@]} -gt 0 ] || { echo "coverage: no profiles written" >&2; exit 1; }
"$LLVM_PROFDATA" merge -sparse -o "$COVDIR/all.profdata" "${all[@]}" || exit 1
"$LLVM_PROFDATA" merge -sparse -o "$COVDIR/fuzz.profdata" "${fuzz[@]}" || exit 1

echo
echo "== line coverage of src/: unit + e2e + fuzz corpora"
"$LLVM_COV" report -instr-profile="$COVDIR/all.profdata" "${objs[@]}" "$ROOT/src" | tee "$COVDIR/report.txt"
echo
echo "== line coverage of src/: the fuzzers alone (files they do not link show 0%)"
"$LLVM_COV" report -instr-profile="$COVDIR/fuzz.profdata" "${objs[@]}" "$ROOT/src" | tee "$COVDIR/report-fuzz.txt"
rm -rf "$COVDIR/html"
"$LLVM_COV" show -format=html -output-dir="$COVDIR/html" -show-line-counts-or-regions \
	-instr-profile="$COVDIR/all.profdata" "${objs[@]}" "$ROOT/src" >/dev/null || exit 1
echo
echo "HTML report: $COVDIR/html/index.html (the text reports: $COVDIR/report*.txt)"
exit $status
