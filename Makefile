# smtptap - see README.md.  `make` builds build/smtptap; `make check` runs
# every test (unit, end-to-end, both again under ASan+UBSan, brief fuzzing).

PREFIX ?= /usr/local
CC ?= cc
# O is the build directory; the sanitizer run uses O=build/asan.
O ?= build
SAN ?=

PKGS := libevent libevent_openssl libevent_pthreads openssl sqlite3
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
	-Wformat=2 -Wno-format-nonliteral -Wvla
CFLAGS ?= -O2 -g
ifeq ($(SAN),1)
CFLAGS := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
LDFLAGS += -fsanitize=address,undefined
endif
# Coverage build (make coverage, O=build/cov CC=clang): clang source-based
# coverage, each process writing its own profile (LLVM_PROFILE_FILE).
COV ?=
ifeq ($(COV),1)
CFLAGS := -O0 -g -fprofile-instr-generate -fcoverage-mapping
LDFLAGS += -fprofile-instr-generate
endif
BASE_CFLAGS = -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L $(WARN) $(CFLAGS) \
	-Iinclude $(PKG_CFLAGS)
ALL_CFLAGS = $(BASE_CFLAGS) -MMD -MP
LIBS = $(PKG_LIBS) -lpthread

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.1.0)

SRCS := $(wildcard src/*.c)
OBJS := $(SRCS:src/%.c=$(O)/obj/%.o) $(O)/obj/gen_schema.o
LIB_OBJS := $(filter-out $(O)/obj/main.o,$(OBJS))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(O)/tests/%)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/fuzz/%)
# The pure modules the fuzzers link (all but fuzz_session).
FUZZ_LIB_SRCS := src/smtp.c src/mime.c src/json.c src/jsonread.c src/rules.c src/rules_parse.c src/rules_regex.c \
	src/recording.c src/mock.c

.PHONY: all deps run check unit e2e fuzz fuzz-bins fuzz-minimise coverage cov-fuzz-bins bench bench-rules bench-reader bench-segment install uninstall clean asan

all: $(O)/smtptap

$(O)/smtptap: $(OBJS)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(O)/obj/%.o: src/%.c | deps-build
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -DSMTPTAP_VERSION='"$(VERSION)"' -c -o $@ $<

$(O)/gen/schema.c: $(wildcard sql/*.sql) tools/embed-sql.sh
	@mkdir -p $(@D)
	sh tools/embed-sql.sh $(wildcard sql/*.sql) > $@.tmp && mv $@.tmp $@

$(O)/obj/gen_schema.o: $(O)/gen/schema.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(O)/tests/%: tests/unit/%.c $(wildcard tests/unit/*.h) $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(LIBS) -lcmocka

# The allocation-failure test wraps the allocator of every object it links
# (see tests/unit/test_alloc_fail.c).
ALLOC_WRAP := -Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc,--wrap=strdup,--wrap=strndup,--wrap=iconv_open
$(O)/tests/test_alloc_fail: LDFLAGS += $(ALLOC_WRAP)

unit-bins: $(UNIT_BINS)

# Fuzzers: libFuzzer with ASan and UBSan, every UBSan finding fatal (a
# report that merely prints would pass the run).  FUZZ_FLAGS are what every
# run uses: the target's dictionary, and inputs allowed well past the 64 KiB
# bounds (SMTP_LINE_MAX, MIME_HDR_MAX) so the caps themselves get fuzzed.
FUZZ_SAN := -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_MAX_LEN ?= 200000
FUZZ_FLAGS = -max_len=$(FUZZ_MAX_LEN) -dict=tests/fuzz/dict/$${t}.dict
# The pure modules are compiled once, into the build/fuzz/obj objects
# fuzz_session links too (same instrumentation), not once per fuzzer: that
# was most of the fuzzers' build time.
FUZZ_LIB_OBJS := $(FUZZ_LIB_SRCS:src/%.c=build/fuzz/obj/%.o)
build/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB_OBJS) $(wildcard include/smtptap/*.h)
	@mkdir -p $(@D)
	clang -std=c11 -D_DEFAULT_SOURCE -g -O1 -Iinclude $(WARN) $(FUZZ_SAN) \
		-o $@ $< $(FUZZ_LIB_OBJS)

# The session-level fuzzer links every module but main.c, each built with
# the fuzzer's instrumentation into build/fuzz/obj.
FUZZ_CFLAGS = -std=c11 -D_DEFAULT_SOURCE -D_POSIX_C_SOURCE=200809L $(WARN) -g -O1 -Iinclude $(PKG_CFLAGS)
FUZZ_SESSION_OBJS := $(filter-out build/fuzz/obj/main.o,$(SRCS:src/%.c=build/fuzz/obj/%.o)) build/fuzz/obj/gen_schema.o
build/fuzz/obj/%.o: src/%.c $(wildcard include/smtptap/*.h) | deps-build
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
		-DSMTPTAP_VERSION='"$(VERSION)"' -c -o $@ $<
build/fuzz/gen/schema.c: $(wildcard sql/*.sql) tools/embed-sql.sh
	@mkdir -p $(@D)
	sh tools/embed-sql.sh $(wildcard sql/*.sql) > $@.tmp && mv $@.tmp $@
build/fuzz/obj/gen_schema.o: build/fuzz/gen/schema.c
	@mkdir -p $(@D)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -c -o $@ $<
build/fuzz/fuzz_session: tests/fuzz/fuzz_session.c $(FUZZ_SESSION_OBJS)
	clang $(FUZZ_CFLAGS) $(FUZZ_SAN) -DFUZZ_STRICT -o $@ $< $(FUZZ_SESSION_OBJS) $(PKG_LIBS) -lpthread

fuzz-bins: $(FUZZ_BINS)

# The fuzzers again with coverage instead of sanitizers, to replay the kept
# corpora for the coverage report.
COV_FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/%.c=build/cov/fuzz/%)
build/cov/fuzz/%: tests/fuzz/%.c $(FUZZ_LIB_SRCS) $(wildcard include/smtptap/*.h)
	@mkdir -p $(@D)
	clang -std=c11 -D_DEFAULT_SOURCE -g -O0 -Iinclude $(WARN) -fsanitize=fuzzer \
		-fprofile-instr-generate -fcoverage-mapping -o $@ $< $(FUZZ_LIB_SRCS)

# (run with O=build/cov COV=1, so $(LIB_OBJS) are the coverage objects)
build/cov/fuzz/fuzz_session: tests/fuzz/fuzz_session.c $(LIB_OBJS)
	@mkdir -p $(@D)
	clang $(BASE_CFLAGS) -fsanitize=fuzzer $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(LIBS)

cov-fuzz-bins: $(COV_FUZZ_BINS)

# Line coverage of src/ by the unit tests, the e2e suite and the fuzzers'
# kept corpora: a report on stdout and build/cov/html/index.html.
coverage: deps
	@bash tools/coverage.sh

# Install missing Debian packages (quick no-op when all are present).
deps-build:
	@sh tools/install-deps.sh build
deps:
	@sh tools/install-deps.sh all

run: deps all
	./$(O)/smtptap proxy --listen 127.0.0.1:2525 --db ./smtptap.db -v

asan:
	$(MAKE) O=build/asan SAN=1 all unit-bins

check: deps
	@bash tests/run-all.sh

unit: all unit-bins
	@bash tests/run-all.sh --only unit

e2e: all
	@bash tests/run-all.sh --only e2e

# Longer fuzzing, FUZZ_SECONDS per target (default 60), growing the kept
# corpora: new finds go to build/fuzz/new-<target> (the tree corpus is only
# read), then `-merge=1` copies into tests/fuzz/corpus/<target> just the
# inputs that add coverage.  Finds over FUZZ_KEEP_MAX bytes are not kept
# (hand-made seeds already cross the 64 KiB caps; the tree corpus must stay
# small).  Review and commit what it added.
FUZZ_KEEP_MAX ?= 100000
# Targets that make fuzz and make check leave out (names, space-separated),
# e.g. `make fuzz FUZZ_SKIP=fuzz_session` for the parsers alone.
FUZZ_SKIP ?=
fuzz: fuzz-bins
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); t=$${n#fuzz_}; new=build/fuzz/new-$$t; \
		case " $(FUZZ_SKIP) " in *" $$n "*) echo "fuzz: $$n skipped (FUZZ_SKIP)"; continue ;; esac; \
		mkdir -p $$new tests/fuzz/corpus/$$t build/fuzz/crashes; \
		echo "fuzz: $$n for $${FUZZ_SECONDS:-60}s"; \
		$$f $(FUZZ_FLAGS) -max_total_time=$${FUZZ_SECONDS:-60} -print_final_stats=1 \
			-artifact_prefix=build/fuzz/crashes/ $$new tests/fuzz/corpus/$$t || exit 1; \
		find $$new -type f -size +$(FUZZ_KEEP_MAX)c -delete; \
		$$f $(FUZZ_FLAGS) -merge=1 tests/fuzz/corpus/$$t $$new 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' ; \
		done; du -sh --apparent-size tests/fuzz/corpus

# Minimise the kept corpora: keep only a smallest set of inputs with the
# same coverage (run after `make fuzz` has grown them for a while).
fuzz-minimise: fuzz-bins
	@for f in $(FUZZ_BINS); do n=$$(basename $$f); t=$${n#fuzz_}; min=build/fuzz/min-$$t; \
		case " $(FUZZ_SKIP) " in *" $$n "*) echo "fuzz-minimise: $$n skipped (FUZZ_SKIP)"; continue ;; esac; \
		rm -rf $$min; mkdir -p $$min; \
		$$f $(FUZZ_FLAGS) -merge=1 $$min tests/fuzz/corpus/$$t 2>&1 | grep -E '^MERGE-OUTER: [0-9]+ new files' || exit 1; \
		rm -rf tests/fuzz/corpus/$$t && mv $$min tests/fuzz/corpus/$$t; \
		done; du -sh --apparent-size tests/fuzz/corpus

bench: deps all
	@bash tools/bench.sh

# What rule matching costs per message, with sets of 100 rules that never
# match (tools/bench/rules_decide.c): a measurement, never a pass/fail.
$(O)/bench/rules_decide: tools/bench/rules_decide.c $(O)/obj/rules.o $(O)/obj/rules_parse.o $(O)/obj/rules_regex.o \
		$(O)/obj/smtp.o
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LDFLAGS) -o $@ $^

bench-rules: $(O)/bench/rules_decide
	./$(O)/bench/rules_decide

# `smtptap sessions` on a database of 100,000 sessions: the default listing
# and --to ADDR --since ... (tools/bench/reader.py), in ms: a measurement,
# never a pass/fail.  READER_BENCH_ARGS="--sessions N --runs R --db PATH".
$(O)/bench/reader_query: tools/bench/reader_query.c $(LIB_OBJS)
	@mkdir -p $(@D)
	$(CC) $(BASE_CFLAGS) $(LDFLAGS) -o $@ $< $(LIB_OBJS) $(LIBS)

bench-reader: all $(O)/bench/reader_query
	/usr/bin/python3 tools/bench/reader.py --smtptap ./$(O)/smtptap --query ./$(O)/bench/reader_query \
		$(READER_BENCH_ARGS)

# What appending 1 MiB to a content segment costs the writer: buffered,
# buffered with the synced pages dropped (what content.c does), O_DIRECT
# (tools/bench/segment_write.c): a measurement, never a pass/fail.
$(O)/bench/segment_write: tools/bench/segment_write.c
	@mkdir -p $(@D)
	$(CC) -std=c11 $(WARN) -O2 -o $@ $<

bench-segment: $(O)/bench/segment_write
	for m in 0 1 2; do ./$(O)/bench/segment_write $$m 300 $(O)/bench/segment_write.tmp || exit 1; done

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 0755 $(O)/smtptap $(DESTDIR)$(PREFIX)/bin/smtptap
	install -m 0644 docs/smtptap.1 $(DESTDIR)$(PREFIX)/share/man/man1/smtptap.1

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/smtptap $(DESTDIR)$(PREFIX)/share/man/man1/smtptap.1

clean:
	rm -rf build

-include $(wildcard $(O)/obj/*.d)
