#!/usr/bin/env python3
"""Turns bench/out/raw.json (written by bench.py) into bench/RESULTS.md and bench/results.json.

    python3 bench/report.py bench/out/raw.json --markdown bench/RESULTS.md --json bench/results.json

Standard library only. Every figure is the median over rounds; a run that failed
(pgbench exit code != 0, aborted clients, failed transactions) is shown as "fails" with
its first error line and never enters a median.
"""

import argparse
import json
import statistics

TARGETS = ["direct", "pgtenant", "pgbouncer"]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_num(v, digits=0):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}"


def short(text, n=110):
    text = " ".join(str(text or "").split())
    return text if len(text) <= n else text[: n - 1] + "…"


def md_escape(text):
    return str(text).replace("|", "\\|")


class Table:
    def __init__(self, *header):
        self.header = header
        self.rows = []

    def add(self, *cells):
        self.rows.append([md_escape(c) for c in cells])

    def render(self):
        lines = ["| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines)


def summarize_runs(runs, value_keys):
    """Median of each key over the successful runs, plus failure info."""
    good = [r for r in runs if r.get("ok")]
    bad = [r for r in runs if not r.get("ok")]
    s = {"rounds": len(runs), "rounds_ok": len(good), "ok": bool(runs) and not bad,
         "error": short(bad[0].get("error")) if bad else None}
    for key in value_keys:
        vals = [r.get(key) for r in good if r.get(key) is not None]
        s[key] = median(vals)
        s[key + "_min"] = min(vals) if vals else None
        s[key + "_max"] = max(vals) if vals else None
    return s


def cell_or_fail(s, key, digits, spread=False):
    if s is None:
        return "not run"
    if s["rounds_ok"] == 0:
        return f"**fails**: {s['error']}"
    text = fmt_num(s[key], digits)
    if spread and s["rounds_ok"] > 1:
        text += f" ({fmt_num(s[key + '_min'], digits)}–{fmt_num(s[key + '_max'], digits)})"
    if not s["ok"]:
        text += f" — **fails in {s['rounds'] - s['rounds_ok']} of {s['rounds']} rounds**: {s['error']}"
    return text


def usable(s, key):
    return s is not None and s["rounds_ok"] > 0 and s.get(key) is not None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("--markdown", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    with open(args.raw) as f:
        raw = json.load(f)
    meta = raw["meta"]
    st = meta["settings"]

    # ---- pgbench: test -> target -> summary
    tests, groups = {}, {}
    for r in raw["pgbench"]:
        tests.setdefault(r["test"], {}).setdefault(r["target"], []).append(r)
        groups.setdefault(r["group"], [])
        if r["test"] not in groups[r["group"]]:
            groups[r["group"]].append(r["test"])
    clients_of = {r["test"]: r["clients"] for r in raw["pgbench"]}
    pgb = {t: {tg: summarize_runs(runs, ["tps", "latency_ms", "cpu_us_per_txn"]) for tg, runs in by.items()}
           for t, by in tests.items()}

    md = []
    md.append("# pgtenant benchmark results\n")
    md.append(f"Written by `bench/run.sh` ({meta.get('started')} – {meta.get('finished', 'unfinished')}). "
              "See `bench/README.md` for what each figure means; the per-statement work (TPC-B, extended "
              "protocol, thread model, io_uring) is measured in `bench/RESULTS-per-statement.md`.\n")
    if st.get("quick"):
        md.append("> **Smoke run (QUICK=1)**: short runs, one round. The numbers show that "
                  "everything works, not how fast it is.\n")

    # ---- headline
    ratios_pb, ratios_direct, fails = [], [], []
    for t, by in pgb.items():
        pt, bo, di = by.get("pgtenant"), by.get("pgbouncer"), by.get("direct")
        if usable(pt, "tps") and usable(bo, "tps"):
            ratios_pb.append((t, pt["tps"] / bo["tps"]))
        if usable(pt, "tps") and usable(di, "tps"):
            ratios_direct.append((t, pt["tps"] / di["tps"]))
        for tg in TARGETS:
            s = by.get(tg)
            if s is not None and not s["ok"]:
                fails.append((t, tg, s))
    headline = []
    if ratios_pb:
        vals = [v for _, v in ratios_pb]
        lo, hi = min(ratios_pb, key=lambda x: x[1]), max(ratios_pb, key=lambda x: x[1])
        headline.append(f"pgtenant/PgBouncer throughput, median over the {len(vals)} pgbench tests both "
                        f"pass: **{statistics.median(vals):.2f}** (lowest {lo[1]:.2f} in `{lo[0]}`, "
                        f"highest {hi[1]:.2f} in `{hi[0]}`).")
    if ratios_direct:
        vals = [v for _, v in ratios_direct]
        headline.append(f"pgtenant/direct throughput, median over {len(vals)} tests: "
                        f"**{statistics.median(vals):.2f}**.")
    for t, tg, s in fails:
        what = "fails" if s["rounds_ok"] == 0 else \
            f"fails in {s['rounds'] - s['rounds_ok']} of {s['rounds']} rounds"
        headline.append(f"`{t}` on **{tg}** {what}: {s['error']}")

    # ---- many tenants
    ten = {}
    for r in raw["tenants"]:
        ten.setdefault(r["scenario"], {}).setdefault(r["target"], []).append(r)
    tsum = {sc: {tg: summarize_runs(runs, ["tps", "p50_ms", "p99_ms", "errors", "connect_seconds",
                                           "server_opens", "server_xacts_per_query",
                                           "proxy_cpu_us_per_query", "server_cpu_us_per_query"])
                 for tg, runs in by.items()} for sc, by in ten.items()}
    # error counts are data here: take them from every run, not just clean ones
    for sc, by in ten.items():
        for tg, runs in by.items():
            tsum[sc][tg]["errors_total"] = sum(r.get("errors", 0) or 0 for r in runs)
            tsum[sc][tg]["has_numbers"] = any("tps" in r for r in runs)
            for key in ("tps", "p50_ms", "p99_ms", "connect_seconds", "seconds", "server_opens",
                        "server_xacts_per_query", "proxy_cpu_us_per_query", "server_cpu_us_per_query"):
                tsum[sc][tg][key + "_all"] = median([r.get(key) for r in runs])
    m = tsum.get("many", {})
    if m.get("pgtenant", {}).get("has_numbers") and m.get("pgbouncer", {}).get("has_numbers"):
        a, b = m["pgtenant"], m["pgbouncer"]
        headline.append(f"{st['tenants']} tenants × 2 clients: pgtenant {fmt_num(a['tps_all'])} q/s "
                        f"(p50 {fmt_num(a['p50_ms_all'], 1)} ms, p99 {fmt_num(a['p99_ms_all'], 1)} ms, "
                        f"{a['errors_total']} errors) vs PgBouncer {fmt_num(b['tps_all'])} q/s (p50 "
                        f"{fmt_num(b['p50_ms_all'], 1)} ms, p99 {fmt_num(b['p99_ms_all'], 1)} ms, "
                        f"{b['errors_total']} errors): ratio **{fmt_ratio(a['tps_all'], b['tps_all'])}**.")

    # ---- idle memory
    idle_rows = []
    for r in raw["idle"]:
        per = None
        if r.get("rss_with_clients") is not None and r.get("connected"):
            per = (r["rss_with_clients"] - r["rss_before"]) / r["connected"]
        idle_rows.append((r, per))
    per_client = {}
    for r, per in idle_rows:
        if per is not None:
            per_client.setdefault(r["target"], {})[r["count"]] = per
    # What each client beyond the smaller count adds: independent of memory the proxy
    # held (or gave back) before the clients came.
    marginal = {}
    for tg in ("pgtenant", "pgbouncer"):
        runs = sorted((r["count"], r) for r, per in idle_rows if r["target"] == tg and per is not None)
        if len(runs) >= 2:
            (n1, a), (n2, b) = runs[0], runs[-1]
            if b["connected"] > a["connected"]:
                marginal[tg] = ((n1, n2), (b["rss_with_clients"] - a["rss_with_clients"])
                                / (b["connected"] - a["connected"]), b["rss_with_clients"])
    if marginal.get("pgtenant") and marginal.get("pgbouncer"):
        (n1, n2), a, rss_a = marginal["pgtenant"]
        _, b, rss_b = marginal["pgbouncer"]
        headline.append(f"Memory per idle client ({n1:,} → {n2:,} clients): pgtenant "
                        f"{a / 1024:.2f} KiB, PgBouncer {b / 1024:.2f} KiB; RSS holding {n2:,} "
                        f"idle clients: pgtenant {rss_a / 2**20:.1f} MiB, PgBouncer "
                        f"{rss_b / 2**20:.1f} MiB.")

    # ---- cpu
    cpu = {}
    for r in raw["cpu"]:
        cpu.setdefault(r["target"], []).append(r)
    csum = {}
    for tg, runs in cpu.items():
        s = summarize_runs(runs, ["cpu_seconds", "tps", "transactions"])
        per = [r["cpu_seconds"] / r["transactions"] * 100000 for r in runs
               if r.get("ok") and r.get("cpu_seconds") is not None and r.get("transactions")]
        s["per_100k"] = median(per)
        s["per_100k_min"] = min(per) if per else None
        s["per_100k_max"] = max(per) if per else None
        s["threads"] = max((r.get("threads") or 0 for r in runs), default=0) or None
        csum[tg] = s
    if usable(csum.get("pgtenant"), "per_100k") and usable(csum.get("pgbouncer"), "per_100k"):
        headline.append(f"Proxy CPU per 100,000 select-only transactions: pgtenant "
                        f"{csum['pgtenant']['per_100k']:.2f} s, PgBouncer {csum['pgbouncer']['per_100k']:.2f} s "
                        f"(ratio **{csum['pgtenant']['per_100k'] / csum['pgbouncer']['per_100k']:.2f}**; "
                        f"processes of {csum['pgtenant']['threads']} and {csum['pgbouncer']['threads']} "
                        "thread(s)).")

    # ---- syscalls
    sys_rows = {r["target"]: r for r in raw["syscalls"]}
    sp = {tg: (r["syscalls"] / r["queries"]) if r.get("ok") and r.get("syscalls") else None
          for tg, r in sys_rows.items()}
    if sp.get("pgtenant") and sp.get("pgbouncer"):
        headline.append(f"Syscalls per simple-query round trip: pgtenant {sp['pgtenant']:.1f}, "
                        f"PgBouncer {sp['pgbouncer']:.1f}.")
    if raw.get("incidents"):
        headline.append(f"**{len(raw['incidents'])} proxy exit(s) during the run**: see Incidents below.")

    md.append("## Headline\n")
    md += [f"- {h}" for h in headline] or ["- (nothing measured)"]
    md.append("")

    # ---- machine, versions, settings
    md.append("## Machine, versions, settings\n")
    t = Table("", "")
    t.add("CPU", f"{meta['nproc']} × {meta['cpu_model']}")
    t.add("memory", f"{meta['memory_mib']:,} MiB; kernel {meta['kernel']}")
    samples = meta.get("loadavg_1min_samples") or []
    during = (f"; 1-min load during the run: median {statistics.median(samples):.2f}, max {max(samples):.2f} "
              "(this counts the benchmark's own processes too, up to 256 PostgreSQL backends; the value "
              "at the start shows what else was running)"
              if samples else "")
    t.add("load average (1/5/15 min)", f"start {meta['loadavg_start']}, end {meta.get('loadavg_end', '–')}{during}")
    t.add("open files limit", meta["open_files_limit"])
    t.add("pgtenant", f"git {meta['pgtenant_rev']} (release build)")
    t.add("PostgreSQL", meta["postgres_version"])
    t.add("PgBouncer", meta["pgbouncer_version"])
    t.add("pgbench", meta["pgbench_version"])
    t.add("run length, rounds", f"{st['seconds']} s per run, {st['rounds']} round(s), medians; "
                                "targets run back to back per test, order rotated each round")
    t.add("pool", f"{st['pool_size']} server connections per pool on both proxies, transaction "
                  f"pooling; server-connection budget {st['host_budget']} (pgtenant host "
                  "`max_connections`, PgBouncer `max_user_connections`)")
    t.add("PostgreSQL settings", f"max_connections={st['max_connections']}, shared_buffers="
                                 f"{st['shared_buffers']}, fsync={st['fsync']}; pgbench scale {st['pgbench_scale']}")
    t.add("network", "loopback (127.0.0.1) only; everything on the same machine")
    md.append(t.render() + "\n")

    md.append("Ratios: **ratio to direct** = the row's tps ÷ direct tps in the same test "
              "(1.00 = as fast as connecting straight to PostgreSQL; above 1 happens when pooling "
              "helps, e.g. many clients on few cores). **pgtenant/pgbouncer** = pgtenant tps ÷ "
              "PgBouncer tps (above 1: pgtenant is faster). tps cells show the median and, over "
              "several rounds, the lowest–highest round. Latency is pgbench's average.\n")

    # ---- the per-statement table: the tests of the performance targets, side by side
    key_tests = ["tpcb-c16", "tpcb-c64", "select-simple-c1", "select-simple-c64",
                 "select-extended-c64", "select-prepared-c64"]
    if any(k in pgb for k in key_tests):
        md.append("## pgtenant ÷ PgBouncer, per test\n")
        md.append("Medians over rounds. CPU/txn = the proxy process's user + system CPU over the run "
                  "(all threads, from /proc/PID/stat) ÷ transactions.\n")
        t = Table("test", "pgtenant tps", "pgtenant CPU µs/txn", "PgBouncer tps", "PgBouncer CPU µs/txn",
                  "tps ÷", "CPU ÷")
        for k in key_tests:
            by = pgb.get(k)
            if not by:
                continue
            pt, bo = by.get("pgtenant"), by.get("pgbouncer")
            tps_r = fmt_ratio(pt["tps"], bo["tps"]) if usable(pt, "tps") and usable(bo, "tps") else "–"
            cpu_r = fmt_ratio(pt["cpu_us_per_txn"], bo["cpu_us_per_txn"]) \
                if usable(pt, "cpu_us_per_txn") and usable(bo, "cpu_us_per_txn") else "–"
            t.add(k, cell_or_fail(pt, "tps", 0) if pt else "not run",
                  fmt_num(pt["cpu_us_per_txn"], 1) if usable(pt, "cpu_us_per_txn") else "–",
                  cell_or_fail(bo, "tps", 0) if bo else "not run",
                  fmt_num(bo["cpu_us_per_txn"], 1) if usable(bo, "cpu_us_per_txn") else "–",
                  tps_r, cpu_r)
        md.append(t.render() + "\n")

    # ---- pgbench tables
    md.append("## pgbench\n")
    md.append("`pgbench -n -j 2` (one thread when 1 client) against database `bench` (scale 10). "
              "direct = PostgreSQL itself, one backend per client.\n")
    summary_json = {}
    for group, test_ids in groups.items():
        md.append(f"### {group}\n")
        t = Table("clients", "target", "tps", "latency ms", "proxy CPU µs/txn", "ratio to direct",
                  "pgtenant/pgbouncer tps", "pgtenant/pgbouncer CPU")
        for tid in test_ids:
            by = pgb[tid]
            di = by.get("direct")
            for tg in TARGETS:
                s = by.get(tg)
                if s is None:
                    continue
                rd = fmt_ratio(s["tps"], di["tps"]) if usable(s, "tps") and usable(di, "tps") else "–"
                rp, rc = "–", "–"
                if tg == "pgtenant" and usable(s, "tps") and usable(by.get("pgbouncer"), "tps"):
                    rp = f"**{s['tps'] / by['pgbouncer']['tps']:.2f}**"
                if tg == "pgtenant" and usable(s, "cpu_us_per_txn") and \
                        usable(by.get("pgbouncer"), "cpu_us_per_txn"):
                    rc = f"**{s['cpu_us_per_txn'] / by['pgbouncer']['cpu_us_per_txn']:.2f}**"
                t.add(clients_of[tid], tg, cell_or_fail(s, "tps", 0, spread=True),
                      fmt_num(s["latency_ms"], 3) if usable(s, "latency_ms") else "–",
                      fmt_num(s["cpu_us_per_txn"], 1) if usable(s, "cpu_us_per_txn") else "–",
                      rd, rp, rc)
            summary_json[tid] = {tg: {k: by[tg][k] for k in ("tps", "latency_ms", "cpu_us_per_txn", "ok",
                                                             "rounds", "rounds_ok", "error")}
                                 for tg in by}
        md.append(t.render() + "\n")
        if "-M prepared" in group:
            md.append("PgBouncer 1.18 does not track prepared statements in transaction mode (support came "
                      "in 1.21): a client's statement is prepared on whichever server it had, so with several "
                      "clients sharing servers pgbench fails. With 1 client it passes only because a lone "
                      "client always gets the same server connection back.\n")

    # ---- many tenants
    md.append("## Many tenants\n")
    md.append(f"The load tool (`bench/load.rs`) runs `SELECT v FROM kv WHERE id = <1..100>` as simple "
              f"queries for {st['seconds']} s. **many**: {st['tenants']} tenants × 2 clients, each tenant "
              f"its own schema in database `many` and its own pool of {st['tenant_pool_size']} (with sharing: at most "
              f"{st['tenant_pool_size']} of the shared servers at once); all pools "
              f"share the budget of {st['host_budget']} server connections, so idle connections of other "
              f"tenants are closed to make room; with sharing, the tenants' shared set holds at most "
              f"{st.get('shared_pool_size', 0) or st['host_budget']} servers (`pool.shared_pool_size`). **single**: the same {2 * st['tenants']} clients on one "
              f"tenant with a pool of {st['pool_size']}. PgBouncer 1.18 has no startup `options` for a "
              "[databases] entry, so each tenant is a [databases] entry with "
              "`connect_query='SET search_path TO tenant_NNNN'` and `pool_size=2`, and "
              "`max_user_connections` is the shared budget. direct is not run: "
              f"{2 * st['tenants']} connections exceed PostgreSQL's max_connections. **wide**: "
              f"{st.get('wide_tenants', 0)} tenants × 1 client on the same budget. pgtenant shares server "
              "connections among the schema tenants of one database and role "
              "(`pool.share_schema_tenants`, on by default); **pgtenant-fifo** is sharing strictly first "
              "come, first served (`pool.share_streak = 0`: a returning server never goes to a waiting "
              "client of its own search_path ahead of the first in line, so nearly every transaction pays a "
              "SET); **pgtenant-noshare** is the same proxy with sharing "
              "off (a server connection per tenant, search_path in its startup packet). *server opens*: "
              "server sessions PostgreSQL opened on `many` during the run (`pg_stat_database.sessions`), "
              "including the first ones.\n")
    t = Table("scenario", "target", "queries/s", "p50 ms", "p99 ms", "errors", "connect all (s)",
              "window (s)", "server opens", "server xacts/query", "proxy CPU µs/query",
              "server CPU µs/query", "pgtenant/pgbouncer")
    for sc in ("many", "single", "wide"):
        for tg in ("pgtenant", "pgtenant-fifo", "pgtenant-noshare", "pgbouncer"):
            s = tsum.get(sc, {}).get(tg)
            if s is None:
                continue
            if not s["has_numbers"]:
                failed = [r for r in ten[sc][tg] if r.get("error")]
                t.add(sc, tg, f"**fails**: {short(failed[0]['error']) if failed else '?'}", "–", "–",
                      "–", "–", "–", "–", "–", "–", "–", "–")
                continue
            rp = "–"
            other = tsum.get(sc, {}).get("pgbouncer")
            if tg.startswith("pgtenant") and other and other["has_numbers"]:
                rp = f"**{fmt_ratio(s['tps_all'], other['tps_all'])}**"
            errs = str(s["errors_total"])
            first = next((r.get("first_error") for r in ten[sc][tg] if r.get("first_error")), None)
            if first:
                errs += f" (first: {short(first, 90)})"
            t.add(sc, tg, fmt_num(s["tps_all"]), fmt_num(s["p50_ms_all"], 2), fmt_num(s["p99_ms_all"], 2),
                  errs, fmt_num(s["connect_seconds_all"], 1), fmt_num(s["seconds_all"], 1),
                  fmt_num(s["server_opens_all"]), fmt_num(s.get("server_xacts_per_query_all"), 2),
                  fmt_num(s.get("proxy_cpu_us_per_query_all"), 1),
                  fmt_num(s.get("server_cpu_us_per_query_all"), 1), rp)
    md.append(t.render() + "\n")
    md.append(f"queries/s = successful queries ÷ the window; the window is {st['seconds']} s plus however long "
              "the last query of any client took to finish (a client stuck waiting for a server connection "
              "stretches it). connect all = time until every client had connected (or failed to). errors "
              "counts failed connects and failed queries (a client whose connection was closed reconnects). "
              "server xacts/query = transactions PostgreSQL ended in `many` during the run ÷ successful "
              "queries: each query is one, and each SET of a search_path on a shared server is one more. "
              "proxy/server CPU µs/query = user + system CPU time of the proxy process and of the "
              "PostgreSQL cluster (postmaster and every backend, including those that exited) during "
              "the run ÷ successful queries, read from /proc: a count a loaded machine distorts far less "
              "than throughput. "
              f"Before the rounds each target ran each scenario once for {st.get('tenant_warmup_seconds', 0)} s "
              "unmeasured, so the figures are steady state (servers have the tenants' tables in their caches). "
              "Medians over rounds, error counts summed over rounds.\n")

    # ---- idle
    md.append("## Memory per idle client\n")
    md.append("A fresh proxy process, warmed with a short pgbench run; then the load tool opens N "
              "connections to database `bench`, runs one `SELECT 1` on each and holds them. "
              "VmRSS is read 3 s after the last client connected. \"KiB per idle client\" = "
              "(VmRSS with the clients − VmRSS before) ÷ N; it understates (or turns negative) "
              "for a proxy that gives memory freed before the clients came back to the system "
              "(pgtenant does once idle clients park), so the comparison is the memory each "
              "client beyond the smaller count adds: (VmRSS with the larger count − VmRSS with "
              "the smaller count) ÷ (difference in clients), each on its own fresh process.\n")
    t = Table("target", "idle clients", "RSS before (MiB)", "RSS with clients (MiB)",
              "KiB per idle client", "RSS after they left (MiB)", "errors")
    for r, per in idle_rows:
        if per is None:
            t.add(r["target"], f"{r['count']:,}", fmt_num(r["rss_before"] / 2**20, 1), "–",
                  f"**fails**: {short(r.get('first_error'))}", "–", "–")
            continue
        errs = str(r.get("errors", 0)) + (f" ({short(r['first_error'], 80)})" if r.get("first_error") else "")
        t.add(r["target"], f"{r['count']:,}", fmt_num(r["rss_before"] / 2**20, 1),
              fmt_num(r["rss_with_clients"] / 2**20, 1), f"**{per / 1024:.1f}**",
              fmt_num(r["rss_after_close"] / 2**20, 1) if r.get("rss_after_close") else "–", errs)
    md.append(t.render() + "\n")
    for tg, ((n1, n2), per, _) in marginal.items():
        md.append(f"- {tg}: each idle client beyond {n1:,} (up to {n2:,}) adds "
                  f"**{per / 1024:.2f} KiB**.\n")
    md.append("\n")

    # ---- cpu
    md.append("## CPU per 100,000 transactions\n")
    md.append(f"User + system CPU seconds of the proxy process (all threads, from /proc/PID/stat) while "
              f"`pgbench -S -M simple -c 16 -j 2` runs {st['cpu_transactions']:,} transactions; "
              "median over rounds. PostgreSQL's and pgbench's own CPU are not counted.\n")
    t = Table("target", "CPU s per 100k transactions", "tps during the run", "threads in the process",
              "pgtenant/pgbouncer")
    for tg in ("pgtenant", "pgbouncer"):
        s = csum.get(tg)
        if s is None:
            continue
        rp = "–"
        if tg == "pgtenant" and usable(s, "per_100k") and usable(csum.get("pgbouncer"), "per_100k"):
            rp = f"**{s['per_100k'] / csum['pgbouncer']['per_100k']:.2f}**"
        t.add(tg, cell_or_fail(s, "per_100k", 2, spread=True),
              fmt_num(s["tps"]) if usable(s, "tps") else "–", s["threads"] or "–", rp)
    md.append(t.render() + "\n")

    # ---- syscalls
    md.append("## Syscalls per simple-query round trip\n")
    md.append("`strace -c -f -p PID` on the proxy (all threads) while `pgbench -S -M simple -c 1 "
              f"-t {st['syscall_transactions']}` runs; total calls ÷ transactions (connection setup "
              "included, so slightly above the steady state). For direct, strace follows the postmaster "
              "and the backend it forks: PostgreSQL's own cost, for reference.\n")
    t = Table("target", "syscalls per round trip", "most frequent (per round trip; 'failed' = returned an error, e.g. EAGAIN)")
    sys_json = {}
    for tg in TARGETS:
        r = sys_rows.get(tg)
        if r is None:
            continue
        if sp.get(tg) is None:
            t.add(tg, f"**fails**: {short(r.get('error'))}", "–")
            continue
        top = ", ".join(f"{t[0]} {t[1] / r['queries']:.1f}"
                        + (f" ({t[2] / r['queries']:.1f} failed)" if len(t) > 2 and t[2] / r["queries"] >= 0.05 else "")
                        for t in r["top"])
        t.add(tg, f"**{sp[tg]:.1f}**", top)
        sys_json[tg] = {"per_round_trip": sp[tg], "top": r["top"], "traced": r.get("traced")}
    md.append(t.render() + "\n")

    if raw.get("incidents"):
        md.append("## Incidents\n")
        for inc in raw["incidents"]:
            md.append(f"- **{inc['target']}** exited (code {inc['exit_code']}) during {inc['during']}; "
                      "restarted. Log tail:\n\n```\n" + inc["log_tail"].rstrip() + "\n```\n")
    if raw.get("skipped"):
        md.append("Skipped: " + ", ".join(f"{s['step']} ({s['reason']})" for s in raw["skipped"]) + "\n")

    with open(args.markdown, "w") as f:
        f.write("\n".join(md).rstrip() + "\n")

    out = {
        "meta": {k: v for k, v in meta.items() if k != "loadavg_1min_samples"},
        "headline": {
            "pgtenant_over_pgbouncer_tps_median": statistics.median([v for _, v in ratios_pb]) if ratios_pb else None,
            "pgtenant_over_direct_tps_median": statistics.median([v for _, v in ratios_direct]) if ratios_direct else None,
            "failures": [{"test": t, "target": tg, "error": s["error"]} for t, tg, s in fails],
        },
        "pgbench": summary_json,
        "tenants": {sc: {tg: {"tps": s["tps_all"], "p50_ms": s["p50_ms_all"], "p99_ms": s["p99_ms_all"],
                              "errors": s["errors_total"]} for tg, s in by.items()}
                    for sc, by in tsum.items()},
        "idle_bytes_per_client": {tg: {str(n): round(v) for n, v in d.items()} for tg, d in per_client.items()},
        "idle_bytes_per_added_client": {tg: round(per) for tg, (_, per, _) in marginal.items()},
        "cpu_seconds_per_100k": {tg: s["per_100k"] for tg, s in csum.items()},
        "syscalls_per_round_trip": sys_json,
        "incidents": [{k: v for k, v in i.items() if k != "log_tail"} for i in raw.get("incidents", [])],
    }
    with open(args.json, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
