/*
 * under_valgrind.h - TEST_UNDER_VALGRIND(): true when the test runs under
 * valgrind (its client request; false natively, and where valgrind's
 * header is missing).
 *
 * A few tests repeat the same code paths at a scale (every 7-byte string,
 * 100k events) that costs a minute under valgrind and adds nothing there:
 * valgrind's part is uninitialised reads and invalid accesses on those
 * paths, which a smaller run reaches just the same.  The full scale still
 * runs natively and under ASan+UBSan (see tests/run-all.sh).
 */
#ifndef SMTPTAP_TEST_UNDER_VALGRIND_H
#define SMTPTAP_TEST_UNDER_VALGRIND_H

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#define TEST_UNDER_VALGRIND() (RUNNING_ON_VALGRIND != 0)
#endif
#endif
#ifndef TEST_UNDER_VALGRIND
#define TEST_UNDER_VALGRIND() 0
#endif

#endif
