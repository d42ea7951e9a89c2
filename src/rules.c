/* TEMPORARY stub, replaced by the rules-engine branch */
#include "smtptap/rules.h"
#include <stdlib.h>
struct rules { int refs; };
struct rules_session { int x; };
struct rules *rules_parse(const char *name, const char *text, size_t len, uint64_t seed, char *err, size_t errsz) { (void)name;(void)text;(void)len;(void)seed;(void)err;(void)errsz; return NULL; }
struct rules *rules_load(const char *path, uint64_t seed, char *err, size_t errsz) { (void)path;(void)seed;(void)err;(void)errsz; return NULL; }
struct rules *rules_ref(struct rules *r) { r->refs++; return r; }
void rules_unref(struct rules *r) { if (--r->refs == 0) free(r); }
size_t rules_count(const struct rules *r) { (void)r; return 0; }
struct rules_session *rules_session_new(struct rules *r) { (void)r; return calloc(1, sizeof(struct rules_session)); }
void rules_session_free(struct rules_session *rs) { free(rs); }
bool rules_decide(struct rules *r, struct rules_session *rs, const struct rules_unit *unit, const struct rules_facts *facts, struct rules_decision *out) { (void)r;(void)rs;(void)unit;(void)facts;(void)out; return false; }
const char *rules_trigger_name(enum rules_trigger t, enum smtp_verb verb) { (void)t;(void)verb; return "x"; }
