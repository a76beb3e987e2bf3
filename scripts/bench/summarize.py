#!/usr/bin/env python3
"""Summarize a peers-*.tsv from scripts/bench-peers.sh.

Usage: python3 summarize.py RESULTS.tsv [--tsv]
       python3 summarize.py RESULTS.tsv --ratios [--tool sp_sync] [--base restic] [--alt borg_zstd3]

Default: groups rows by (corpus, tool, step). wall: median and min over reps; RSS: median
(MiB); repo/added: median in MB (1e6 bytes). notes: distinct notes (FAIL/SKIPPED/verify).
--tsv: same table, tab-separated.
--ratios: per corpus and step (cold, nochange, incr, restore), TOOL's median wall divided by
BASE's and by ALT's, peak-RSS ratio vs BASE, cold repo-size ratio and incr bytes_added ratio
vs BASE. Rows marked FAIL are left out of the medians. <1 means TOOL is faster/smaller.
"""
import argparse
import csv
import statistics
from collections import OrderedDict

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("tsv")
ap.add_argument("--tsv", dest="as_tsv", action="store_true", help="tab-separated summary")
ap.add_argument("--ratios", action="store_true", help="print the TOOL/peer ratio section")
ap.add_argument("--tool", default="sp_sync")
ap.add_argument("--base", default="restic")
ap.add_argument("--alt", default="borg_zstd3")
args = ap.parse_args()

with open(args.tsv, newline="") as fh:
    rows = list(csv.DictReader(fh, delimiter="\t"))
groups = OrderedDict()
for r in rows:
    groups.setdefault((r["corpus"], r["tool"], r["step"]), []).append(r)


def nums(rs, k):
    out = []
    for r in rs:
        try:
            out.append(float(r[k]))
        except (TypeError, ValueError):
            pass
    return out


def med(v):
    return statistics.median(v) if v else None


def fmt(v, scale=1.0, nd=2):
    return "-" if v is None else f"{v / scale:.{nd}f}"


def notes_of(rs):
    return sorted({n for r in rs for n in (r.get("note") or "").split("; ")
                   if n and n != "warm" and not n.startswith("mutate")})


def table(header, out, left):
    widths = [max(len(x[i]) for x in [header] + out) for i in range(len(header))]

    def line(cols):
        return "  ".join(c.ljust(widths[i]) if i in left else c.rjust(widths[i])
                         for i, c in enumerate(cols)).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    prev = None
    for o in out:
        if prev is not None and o[0] != prev:
            lines.append("")
        prev = o[0]
        lines.append(line(o))
    return "\n".join(lines)


def summary():
    header = ["corpus", "tool", "step", "n", "wall_med_s", "wall_min_s", "rss_med_MiB",
              "repo_med_MB", "added_med_MB", "notes"]
    out = []
    for (corpus, tool, step), rs in groups.items():
        w = nums(rs, "wall_s")
        out.append([corpus, tool, step, str(len(w)), fmt(med(w)), fmt(min(w) if w else None),
                    fmt(med(nums(rs, "peak_rss_kib")), 1024, 1),
                    fmt(med(nums(rs, "repo_bytes")), 1e6, 1),
                    fmt(med(nums(rs, "bytes_added")), 1e6, 3),
                    ",".join(notes_of(rs)) or "-"])
    if args.as_tsv:
        print("\t".join(header))
        for o in out:
            print("\t".join(o))
        return
    print(table(header, out, {0, 1, 2, 9}))
    print("\nAll runs warm-cache (page cache not dropped). MB = 1e6 bytes; RSS = peak of the "
          "largest single process in the step.")


STEPS = ["cold", "nochange", "incr", "restore"]


def ok_rows(corpus, tool, step):
    return [r for r in groups.get((corpus, tool, step), [])
            if not (r.get("note") or "").startswith(("FAIL", "SKIPPED"))]


def medk(corpus, tool, step, key):
    return med(nums(ok_rows(corpus, tool, step), key))


def ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 0.0 if a == 0 else float("inf")
    return a / b


def rfmt(v):
    if v is None:
        return "-"
    if v == float("inf"):
        return "inf"
    return f"{v:.2f}"


def ratios():
    t, b, a = args.tool, args.base, args.alt
    corpora = list(OrderedDict.fromkeys(c for (c, _, _) in groups))
    print(f"ratios: {t} / peer, medians over successful reps (<1 = {t} faster / smaller / leaner)")
    header = ["corpus", "step", f"{t}_wall_s", f"wall/{b}", f"wall/{a}", f"rss/{b}", "n", "notes"]
    out, extra = [], []
    for c in corpora:
        for s in STEPS:
            tw = medk(c, t, s, "wall_s")
            n = len(nums(ok_rows(c, t, s), "wall_s"))
            notes = ",".join(x for x in notes_of(groups.get((c, t, s), []))) or "-"
            out.append([c, s, fmt(tw), rfmt(ratio(tw, medk(c, b, s, "wall_s"))),
                        rfmt(ratio(tw, medk(c, a, s, "wall_s"))),
                        rfmt(ratio(medk(c, t, s, "peak_rss_kib"), medk(c, b, s, "peak_rss_kib"))),
                        str(n), notes])
        rc = (medk(c, t, "cold", "repo_bytes"), medk(c, b, "cold", "repo_bytes"))
        ri = (medk(c, t, "incr", "bytes_added"), medk(c, b, "incr", "bytes_added"))
        for tool in (t, b, a):
            skipped = groups.get((c, tool, "all"), [])
            for r in skipped:
                extra.append(f"{c}: {tool} {r.get('note') or 'no rows'}")
            if not skipped and not any(k[0] == c and k[1] == tool for k in groups):
                extra.append(f"{c}: {tool} not in this run")
        extra.append(f"{c}: cold repo_bytes   {t}/{b} = {rfmt(ratio(*rc))}"
                     f"  ({fmt(rc[0], 1e6, 1)} MB / {fmt(rc[1], 1e6, 1)} MB)")
        extra.append(f"{c}: incr bytes_added  {t}/{b} = {rfmt(ratio(*ri))}"
                     f"  ({fmt(ri[0], 1e6, 3)} MB / {fmt(ri[1], 1e6, 3)} MB)")
    print(table(header, out, {0, 1, 7}))
    print()
    print("\n".join(extra))
    print(f"\n'-' = no successful {t} or peer rows for that cell (skipped, failed or not run).")


if args.ratios:
    ratios()
else:
    summary()
