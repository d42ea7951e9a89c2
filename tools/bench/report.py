"""Summarise tools/bench.sh results: one table per workload on stdout and,
with --doc PATH, the same tables in a markdown report (docs/performance.md).

Input: --results (TSV, one line per measurement, written by bench.sh) and
--meta (TSV key/value lines: machine, versions, workloads).
"""
import argparse
import statistics
import sys

RELAY_ORDER = ["direct", "haproxy", "aiosmtpd", "smtptap"]
# Targets the project must meet (README / issue): smtptap msg/s on B and D.
TARGETS = {"B": {"haproxy": 0.6, "aiosmtpd": 4.0}, "D": {"haproxy": 0.6, "aiosmtpd": 4.0}}
FIELDS = ["workload", "relay", "rep", "status", "msgs", "wall", "cpu_ticks", "clk_tck",
          "rss_kb", "flush_s", "db_rows", "db_bytes", "sink_msgs", "note", "cpu_ticks_all", "other_cpus"]


def read_meta(path):
    meta, workloads = {}, {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if parts[0].startswith("workload."):
                w = parts[0].split(".", 1)[1]
                workloads[w] = dict(count=int(parts[1]), sessions=int(parts[2]),
                                    reuse=parts[3] == "1", size=int(parts[4]),
                                    desc=parts[5], count_aiosmtpd=int(parts[6]))
            elif parts[0] == "idle" and len(parts) >= 3:
                meta["idle_wait"], meta["idle_load"] = parts[1], parts[2]
            elif len(parts) >= 2:
                meta[parts[0]] = parts[1]
    return meta, workloads


def read_results(path):
    rows = []
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (len(FIELDS) - len(parts))
            rows.append(dict(zip(FIELDS, parts)))
    return rows


def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def summarise(rows, workloads):
    """{workload: {relay: summary}} with medians over the successful reps."""
    out = {}
    for w in workloads:
        out[w] = {}
        relays = [r for r in RELAY_ORDER if any(x["workload"] == w and x["relay"] == r for x in rows)]
        for relay in relays:
            mine = [x for x in rows if x["workload"] == w and x["relay"] == relay]
            ok = [x for x in mine if x["status"] == "ok" and fnum(x["wall"])]
            s = dict(runs=len(mine), ok=len(ok), notes=[x["note"] for x in mine if x["status"] != "ok"])
            if ok:
                rates = [int(x["msgs"]) / float(x["wall"]) for x in ok]
                s["rate"] = statistics.median(rates)
                s["rate_min"], s["rate_max"] = min(rates), max(rates)
                def per_msg(x, key):
                    return float(x[key]) / float(x["clk_tck"]) / int(x["msgs"]) * 1e6
                cpus = [per_msg(x, "cpu_ticks_all") for x in ok if fnum(x["cpu_ticks_all"]) is not None]
                s["cpu_us"] = statistics.median(cpus) if cpus else None
                cpus = [per_msg(x, "cpu_ticks") for x in ok if fnum(x["cpu_ticks"]) is not None]
                s["cpu_run_us"] = statistics.median(cpus) if cpus else None
                rss = [float(x["rss_kb"]) / 1024 for x in ok if fnum(x["rss_kb"])]
                s["rss_mb"] = statistics.median(rss) if rss else None
                fl = [float(x["flush_s"]) for x in ok if fnum(x["flush_s"]) is not None]
                s["stop_s"] = statistics.median(fl) if fl else None
                dbr = [int(x["db_rows"]) for x in ok if fnum(x["db_rows"]) is not None]
                s["db_rows"] = min(dbr) if dbr else None
                dbb = [float(x["db_bytes"]) for x in ok if fnum(x["db_bytes"])]
                s["db_mb"] = statistics.median(dbb) / 1048576 if dbb else None
                s["msgs"] = int(ok[0]["msgs"])
                oth = [float(x["other_cpus"]) for x in ok if fnum(x["other_cpus"]) is not None]
                s["other"] = statistics.median(oth) if oth else None
                s["other_max"] = max(oth) if oth else None
            out[w][relay] = s
    return out


def ratio(s, base):
    if not base or "rate" not in s or "rate" not in base:
        return None
    return s["rate"] / base["rate"]


def table(w, summ):
    """Rows of cells for one workload (header first)."""
    head = ["relay", "msg/s (median)", "min-max", "vs direct", "vs haproxy",
            "vs aiosmtpd", "CPU us/msg", "peak RSS MB", "other load", "notes"]
    body = []
    for relay, s in summ.items():
        if "rate" not in s:
            body.append([relay, "FAILED", "", "", "", "", "", "", "", "; ".join(s["notes"])[:120]])
            continue
        cells = [relay, "%.0f" % s["rate"], "%.0f-%.0f" % (s["rate_min"], s["rate_max"])]
        for base in ("direct", "haproxy", "aiosmtpd"):
            r = ratio(s, summ.get(base)) if base != relay else None
            if base == "aiosmtpd" and relay != "smtptap":
                r = None
            cells.append("%.2fx" % r if r is not None else "")
        cells.append("%.0f" % s["cpu_us"] if s.get("cpu_us") is not None else "-")
        cells.append("%.1f" % s["rss_mb"] if s.get("rss_mb") is not None else "-")
        cells.append("%.2f (max %.2f)" % (s["other"], s["other_max"]) if s.get("other") is not None else "-")
        notes = []
        if s["ok"] < s["runs"]:
            notes.append("%d of %d runs failed" % (s["runs"] - s["ok"], s["runs"]))
        if relay == "smtptap":
            if s.get("stop_s") is not None:
                notes.append("flush on SIGTERM %.2f s" % s["stop_s"])
            if s.get("cpu_us") and s.get("cpu_run_us") is not None:
                notes.append("CPU until smtp-source ended %.0f us/msg" % s["cpu_run_us"])
            if s.get("db_rows") is not None:
                notes.append("DB %d/%d msgs" % (s["db_rows"], s["msgs"]))
            if s.get("db_mb") is not None:
                notes.append("%.1f MB" % s["db_mb"])
        cells.append(", ".join(notes))
        body.append(cells)
    return head, body


def targets(w, summ):
    lines = []
    tap = summ.get("smtptap")
    for base, need in TARGETS.get(w, {}).items():
        r = ratio(tap, summ.get(base)) if tap else None
        if r is None:
            continue
        lines.append("target %s: smtptap >= %.1fx %s: %.3fx %s"
                     % (w, need, base, r, "PASS" if r >= need else "FAIL"))
    return lines


def fmt_text(head, body):
    widths = [max(len(c) for c in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(wd) if i and i < 9 else c.ljust(wd)  # noqa: E731
                                   for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(head), line(["-" * wd for wd in widths])] + [line(b) for b in body])


def fmt_md(head, body):
    out = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * 8 + ["---"]) + "|"]
    out += ["| " + " | ".join(c.replace("|", "/") for c in b) + " |" for b in body]
    return "\n".join(out)


def describe(w, wl):
    size = "1 MiB" if wl["size"] == 1048576 else "%d KiB" % (wl["size"] // 1024) \
        if wl["size"] % 1024 == 0 else "%d bytes" % wl["size"]
    return "Workload %s - %s (%d messages of %s, aiosmtpd %d; smtp-source -s %d%s)" % (
        w, wl["desc"], wl["count"], size, wl["count_aiosmtpd"], wl["sessions"],
        " -d" if wl["reuse"] else "")


def write_doc(path, meta, workloads, summ, all_targets):
    cmd = (meta.get("env", "").strip() + " make bench").strip()
    L = []
    L.append("# smtptap performance")
    L.append("")
    L.append("Generated by `tools/bench.sh` (`make bench`); do not edit by hand - rerun it.")
    L.append("")
    L.append("- Date: %s" % meta.get("date", "?"))
    L.append("- Command: `%s` (%s repetition%s per cell, medians shown; scale %s)"
             % (cmd, meta.get("repeat"), "" if meta.get("repeat") == "1" else "s", meta.get("scale")))
    L.append("- Machine: %s CPUs (`nproc`), %s, %s; load average at start %s, at end %s. "
             "Client, relay and sink all share these CPUs."
             % (meta.get("nproc"), meta.get("cpu"), meta.get("kernel"), meta.get("loadavg"),
                meta.get("loadavg_end", "?")))
    L.append("- Versions: smtptap %s; %s; aiosmtpd %s (%s); Postfix smtp-source/smtp-sink %s"
             % (meta.get("smtptap", "?"), meta.get("haproxy", "?"),
                meta.get("aiosmtpd", "?").replace("aiosmtpd ", ""), meta.get("python", "?"),
                meta.get("postfix", "?")))
    if meta.get("quick") == "1":
        L.append("- **QUICK mode (smoke test): counts are tiny, numbers are not meaningful.**")
    L.append("")
    L.append("## Summary")
    L.append("")
    flat = [t for w in workloads for t in all_targets.get(w, [])]
    if flat:
        for t in flat:
            L.append("- " + t)
    else:
        L.append("- Targets (smtptap >= 0.6x haproxy and >= 4x aiosmtpd msg/s on B and D): "
                 "not evaluated, some relay is missing from this run.")
    noisy = ["%s/%s %.2f" % (w, r, s["other"]) for w in workloads for r, s in summ[w].items()
             if s.get("other") is not None and s["other"] > 0.2]
    if noisy:
        L.append("- **Noisy run**: other processes used more than 0.2 CPUs (median) during: "
                 + ", ".join(noisy) + ". Rerun on a quiet machine before drawing conclusions "
                 "from small differences.")
    else:
        L.append("- Other processes stayed below 0.2 CPUs (median) in every cell.")
    L.append("")
    L.append("## Setup")
    L.append("")
    L.append("`smtp-source` (Postfix) -> relay -> `smtp-sink` (Postfix), all on 127.0.0.1. "
             "The relays:")
    L.append("")
    L.append("- **direct**: smtp-source connects straight to smtp-sink. The ceiling: "
             "what the client and sink alone can do on this machine.")
    L.append("- **haproxy**: HAProxy in `mode tcp`, one frontend, one backend server "
             "(a byte pipe that understands nothing: the cost of one extra hop).")
    L.append("- **aiosmtpd**: `python3 -m aiosmtpd -n -c ...Proxy 127.0.0.1 SINKPORT`, aiosmtpd's "
             "stock `Proxy` handler (it receives the whole message, then delivers it upstream "
             "with a blocking `smtplib` connection per message). aiosmtpd 1.4.3's CLI cannot pass "
             "arguments to `Proxy`, so `tools/bench/aiosmtpd_cli_proxy.py` adds only a "
             "`from_cli()`.")
    L.append("- **smtptap**: `build/smtptap proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:SINKPORT "
             "--db TMP/bench.db`, full recording (every command, reply and message body) into a "
             "fresh SQLite database per measurement.")
    L.append("")
    L.append("For each workload the relays run interleaved (direct, haproxy, aiosmtpd, smtptap, "
             "then again), each measurement with a fresh smtp-sink and a fresh relay process.")
    L.append("")
    L.append("## Results")
    for w, wl in workloads.items():
        L.append("")
        L.append("### " + describe(w, wl))
        L.append("")
        head, body = table(w, summ[w])
        L.append(fmt_md(head, body))
        if all_targets.get(w):
            L.append("")
            for t in all_targets[w]:
                L.append("- " + t)
    L.append("")
    L.append("## How to read this")
    L.append("")
    L.append("- **msg/s**: messages delivered per second of smtp-source wall time (from its start "
             "until it exits, after the last reply). Median of the repetitions; *min-max* shows "
             "the spread, which on a shared machine is the noise floor: differences smaller "
             "than the spread mean nothing.")
    L.append("- **vs direct / vs haproxy / vs aiosmtpd**: the relay's median msg/s divided by "
             "that relay's. smtptap's targets are >= 0.6x haproxy and >= 4x aiosmtpd on "
             "workloads B and D.")
    L.append("- **CPU us/msg**: user+system CPU time of the relay process (all threads, from "
             "`/proc/PID/stat`) consumed from the start of smtp-source until the relay exits "
             "after SIGTERM (sampled every 10 ms while it stops), divided by the messages: "
             "start-up is excluded, smtptap's deferred recording and final flush are included "
             "(its notes also give the CPU until smtp-source ended). With "
             "only %s CPUs shared by client, relay and sink, CPU per message is the more "
             "portable number: msg/s also depends on how the scheduler shares the CPUs."
             % meta.get("nproc", "few"))
    L.append("- **peak RSS MB**: the relay's `VmHWM` (peak resident set) at the end of the "
             "workload, before it is stopped.")
    L.append("- **other load**: CPUs used during the measurement by processes other than "
             "smtp-source, the relay and smtp-sink (machine busy time from `/proc/stat`, steal "
             "included, minus theirs); median and maximum over the repetitions. On a shared "
             "machine this is the noise: anything above ~0.2 means that cell was disturbed. "
             "Before each measurement the script waits up to %s s for this to drop below %s."
             % (meta.get("idle_wait", "?"), meta.get("idle_load", "?")))
    L.append("- **smtptap notes**: *flush on SIGTERM* is the time from SIGTERM to exit "
             "(draining the recording queue, closing the database), not included in msg/s; "
             "*DB n/m msgs* counts rows of the `messages` table afterwards (the run fails "
             "loudly if any message is missing); the size is the database with its WAL.")
    L.append("")
    with open(path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--meta", required=True)
    ap.add_argument("--doc")
    a = ap.parse_args()
    meta, workloads = read_meta(a.meta)
    rows = read_results(a.results)
    summ = summarise(rows, workloads)
    all_targets = {}
    print()
    for w, wl in workloads.items():
        print(describe(w, wl))
        head, body = table(w, summ[w])
        print(fmt_text(head, body))
        all_targets[w] = targets(w, summ[w])
        for t in all_targets[w]:
            print(t)
        print()
    if a.doc:
        write_doc(a.doc, meta, workloads, summ, all_targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
