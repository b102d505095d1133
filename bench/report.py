"""Turns the raw figures of a bench run into results.json, REPORT.md and the
chart (report.png). Used by harness.py; `python3 bench/report.py DIR` rewrites
REPORT.md and the chart of DIR from its results.json."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
METRICS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "p999_ms",
    "peak_rss_kib",
    "idle_anon_kib",
    "idle_file_kib",
    "load_anon_kib",
    "load_file_kib",
    "after_anon_kib",
    "server_cpu_pct",
    "wrk_cpu_pct",
    "cpu0_others_pct",
)
# Only in the rows of scenarios with spinners (hello-under-lua): the same
# server's /hello figures before the spinners started, and the spinners' own.
SPIN_METRICS = (
    "idle_rps",
    "idle_p50_ms",
    "idle_p99_ms",
    "idle_p999_ms",
    "p99_delta_ms",
    "spin_requests",
    "spin_p50_ms",
    "spin_max_ms",
    "spinners",
)
# hello-under-lua: /hello's p99 while the scripts spin counts as "within a few
# ms of idle" up to this much above its idle p99 (issue 15).
SPIN_P99_DELTA_MS = 5.0
README_START, README_END = "<!-- headline:start -->", "<!-- headline:end -->"


# Interference (other processes' share of the server's CPU) up to which a run
# is called quiet.
QUIET_PCT = 5


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(data: dict) -> dict:
    """{scenario: {server: {metric: {median, min, max, n}}}} over the runs."""
    out: dict = {}
    for row in data["runs"]:
        cell = out.setdefault(row["scenario"], {}).setdefault(row["server"], {"_rows": []})
        cell["_rows"].append(row)
    for scenario in out.values():
        for cell in scenario.values():
            rows = cell.pop("_rows")
            for m in METRICS:
                # Older results.json files lack the memory split.
                values = [r[m] for r in rows if m in r]
                cell[m] = spread(values) if values else {"median": 0, "min": 0, "max": 0, "n": 0}
            cell["non_2xx"] = sum(r["non_2xx"] for r in rows)
            cell["socket_errors"] = sum(r["socket_errors"] for r in rows)
            if any("spin_statuses" in r for r in rows):
                for m in SPIN_METRICS:
                    cell[m] = spread([r[m] for r in rows])
                statuses: dict[str, int] = {}
                for r in rows:
                    for status, count in r["spin_statuses"].items():
                        statuses[status] = statuses.get(status, 0) + count
                cell["spin_statuses"] = statuses
                cell["spin_socket_errors"] = sum(r["spin_socket_errors"] for r in rows)
    return out


def get(summary, scenario, server, metric="rps"):
    try:
        return summary[scenario][server][metric]["median"]
    except KeyError:
        return None


# --------------------------------------------------------------------------
# Goals of issue 7: measured, never asserted.


def goals(data: dict, summary: dict) -> list[dict]:
    notes = {(n["scenario"], n["server"]): n["note"] for n in data["notes"]}
    skipped = {(s["scenario"], s["server"]): s["reason"] for s in data["skipped"]}
    startup = data["startup_ms"]
    g = []

    def missing_why(scenario, server):
        return f"{server}: {skipped.get((scenario, server), 'not in this run').removeprefix('n/a: ')}"

    def add(goal, target, measured, ok, why=""):
        g.append(
            {
                "goal": goal,
                "target": target,
                "measured": measured,
                "status": "n/a" if ok is None else ("met" if ok else "missed"),
                "why": why,
            }
        )

    def ratio_goal(goal, scenario, a, b, factor, target, higher_is_better=True, metric="rps", fmt="{:,.0f}"):
        va, vb = get(summary, scenario, a, metric), get(summary, scenario, b, metric)
        if not va or not vb:
            add(goal, target, "not measured", None, missing_why(scenario, a if not va else b))
            return
        ratio = va / vb
        ok = ratio >= factor if higher_is_better else ratio <= factor
        why = notes.get((scenario, a), "")
        add(goal, target, f"{fmt.format(va)} vs {fmt.format(vb)} ({ratio:.2f}x)", None if why else ok, why)

    ratio_goal("GET /hello requests/s vs Go net/http", "hello", "skiff", "go-nethttp", 1.5, ">= 1.5x")
    ratio_goal("GET /hello requests/s vs nginx", "hello", "skiff", "nginx", 0.9, ">= 0.9x")
    ratio_goal(
        "GET /hello p99 vs Go net/http",
        "hello",
        "skiff",
        "go-nethttp",
        1.0,
        "lower",
        higher_is_better=False,
        metric="p99_ms",
        fmt="{:.2f} ms",
    )
    # "lower" is strict: equal is not lower.
    if g[-1]["status"] == "met" and get(summary, "hello", "skiff", "p99_ms") == get(
        summary, "hello", "go-nethttp", "p99_ms"
    ):
        g[-1]["status"] = "missed"
    ratio_goal(
        "Private memory (RssAnon) under the GET /hello load (at 90% of the run) vs Go net/http",
        "hello",
        "skiff",
        "go-nethttp",
        1.0,
        "<= 1.0x",
        higher_is_better=False,
        metric="load_anon_kib",
        fmt="{:,.0f} KiB",
    )
    if "skiff" in startup:
        med = statistics.median(startup["skiff"])
        add(
            "Start-up to first 200, SQLite, existing database (migrations included)",
            "< 10 ms",
            f"{med:.1f} ms median (max {max(startup['skiff']):.1f})",
            med < 10,
        )
    else:
        add(
            "Start-up to first 200, SQLite, existing database (migrations included)",
            "< 10 ms",
            "not measured",
            None,
            "skiff not in this run",
        )
    ratio_goal("GET /lua requests/s vs nginx-lua", "lua", "skiff", "nginx", 0.8, ">= 0.8x")
    ratio_goal(
        "GET /users/{id} (hot set) on SQLite vs gin's in-memory map", "get-user-hot", "skiff", "gin", 1.0, ">= 1.0x"
    )
    spin = summary.get("hello-under-lua", {}).get("skiff")
    spin_goal = "GET /hello p99 while 50 Lua scripts spin: within a few ms of idle"
    spin_target = f"<= idle p99 + {SPIN_P99_DELTA_MS:.0f} ms"
    if spin:
        delta = spin["p99_delta_ms"]["median"]
        add(
            spin_goal,
            spin_target,
            f"{spin['p99_ms']['median']:.2f} ms vs {spin['idle_p99_ms']['median']:.2f} ms idle "
            f"({delta:+.2f} ms; spinners: {statuses_text(spin['spin_statuses'])})",
            delta <= SPIN_P99_DELTA_MS,
        )
    else:
        add(spin_goal, spin_target, "not measured", None, missing_why("hello-under-lua", "skiff"))
    post = get(summary, "post-user", "skiff")
    add(
        "POST /users on SQLite, durable creates/s",
        ">= 10,000/s",
        "not measured" if post is None else f"{post:,.0f}/s",
        None if post is None else post >= 10_000,
        "" if post is not None else missing_why("post-user", "skiff"),
    )
    return g


# --------------------------------------------------------------------------
# Markdown.


def statuses_text(statuses: dict) -> str:
    """{"503": 412, "500": 1} as "412 × 503, 1 × 500", most common first."""
    if not statuses:
        return "no answer"
    return ", ".join(f"{n:,} × {code}" for code, n in sorted(statuses.items(), key=lambda kv: -kv[1]))


def fmt_rps(v):
    return f"{v:,.0f}"


def fmt_ms(v):
    return f"{v:.2f}" if v < 10 else f"{v:.1f}"


def fmt_mib(kib):
    return f"{kib / 1024:.1f}"


def cell(s: dict, f) -> str:
    if s["n"] == 1:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])})"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def headline(data: dict, summary: dict) -> str:
    servers, startup = data["servers"], data["startup_ms"]
    rows = []
    hello = summary.get("hello", {})
    for name, info in servers.items():
        h = hello.get(name)
        st = startup.get(name)
        rows.append(
            [
                info["label"],
                cell(h["rps"], fmt_rps) if h else "–",
                fmt_ms(h["p99_ms"]["median"]) if h else "–",
                f"{fmt_mib(h['load_anon_kib']['median'])} / {fmt_mib(h['load_file_kib']['median'])}" if h else "–",
                f"{statistics.median(st):.1f}" if st else "–",
                f"{info['size_bytes'] / 1e6:.1f}",
            ]
        )
    return md_table(
        [
            "server",
            "GET /hello req/s, median (min–max)",
            "p99 ms",
            "private / file-backed MiB under load",
            "start-up ms",
            "size MB",
        ],
        rows,
    )


def spin_section(cells: dict, names: list[str], label) -> list[str]:
    """hello-under-lua: /hello idle and under spin side by side, and what the
    spinners got. The table after it is the usual one, of the run under spin."""
    out = [
        "Each run starts the server, measures `GET /hello` idle, then starts a second wrk whose "
        "connections each keep one `GET /lua/spin` in flight (a script that is `while true do end`, "
        "ended by skiff's time limit, default 100 ms: a `503` is the limit holding) and, "
        "after 1 s, measures `GET /hello` again on the same server. "
        f"Goal: the p99 under spin within {SPIN_P99_DELTA_MS:.0f} ms of the idle one.",
        "",
    ]
    rows, lines = [], []
    for name in names:
        c = cells.get(name)
        if not c or "idle_p99_ms" not in c:
            continue
        for phase, rps, p50, p99, p999 in (
            ("idle", "idle_rps", "idle_p50_ms", "idle_p99_ms", "idle_p999_ms"),
            (f"{c['spinners']['median']:.0f} scripts spinning", "rps", "p50_ms", "p99_ms", "p999_ms"),
        ):
            rows.append(
                [
                    label(name),
                    phase,
                    cell(c[rps], fmt_rps),
                    cell(c[p50], fmt_ms),
                    cell(c[p99], fmt_ms),
                    fmt_ms(c[p999]["median"]),
                ]
            )
        delta = c["p99_delta_ms"]["median"]
        lines.append(
            f"{label(name)}: p99 {delta:+.2f} ms under spin "
            f"({'within' if delta <= SPIN_P99_DELTA_MS else 'more than'} {SPIN_P99_DELTA_MS:.0f} ms of idle). "
            f"The spinners' answers: {statuses_text(c['spin_statuses'])}, {c['spin_socket_errors']} socket errors "
            f"({c['spin_requests']['median']:,.0f} per run, median); each took {fmt_ms(c['spin_p50_ms']['median'])} ms "
            f"at the median, {fmt_ms(c['spin_max_ms']['median'])} ms at most."
        )
    if rows:
        out += [md_table(["server", "GET /hello", "req/s", "p50 ms", "p99 ms", "p99.9 ms"], rows), ""]
        out += [*lines, ""]
    return out


def write_markdown(data: dict, summary: dict, goal_rows: list[dict]) -> str:
    m, host, method = data["meta"], data["meta"]["host"], data["meta"]["method"]
    servers = data["servers"]

    def label(n):
        return servers[n]["label"]

    notes = {(n["scenario"], n["server"]): n["note"] for n in data["notes"]}
    skipped = {(s["scenario"], s["server"]): s["reason"] for s in data["skipped"]}
    out = ["# skiff benchmark report", ""]
    for note in m["notes"]:
        out.append(f"> **{note}**")
        out.append("")
    out += [
        f"Generated by `{m['command'].strip()}` ({'full run' if m['full_run'] else 'partial or quick run'}) "
        f"on {m['started'][:10]} from {m['started'][11:16]} to {m['finished'][11:16]} UTC; skiff built from "
        f"commit `{m['skiff_commit']}`, harness at `{m.get('bench_commit', '?')}`.",
        "",
        f"Machine: {host['cpu']}, {host['cpus']} CPUs, {host['memory_mib']:,} MiB, {host['os']}, "
        f"kernel {host['kernel']}; databases on {host['tmp_fs']}. Load average before/after: "
        f"{' '.join(m['loadavg_before'])} / {' '.join(m['loadavg_after'])}.",
        "",
        f"Method: one server at a time pinned to CPU {method['server_cpu']}, wrk ({m['tools']['wrk'].split(' [')[0]}, "
        f"1 thread, {method['connections']} connections) pinned to CPU {method['wrk_cpu']}; "
        f"{method['warmup_s']} s warm-up, {method['runs']} run(s) of {method['duration_s']} s per scenario "
        "and server, interleaved across servers; each run starts the server afresh (new database). "
        "Figures are medians with (min–max) over the runs. req/s counts 2xx/3xx answers only. "
        "See [README.md](README.md) for the details.",
        "",
    ]
    others = [r["cpu0_others_pct"] for r in data["runs"]]
    if others:
        # The verdict comes from the figure, never from a note given by hand.
        verdict = (
            "A quiet machine"
            if max(others) <= QUIET_PCT
            else f"**Not a quiet machine** (more than {QUIET_PCT}% in some run)"
        )
        out += [
            f"{verdict}: other processes used up to {max(others):.0f}% (median "
            f"{statistics.median(others):.0f}%) of the server's CPU during the measured runs; "
            "the higher, the less these figures mean.",
            "",
        ]

    out += [
        "## Headline: GET /hello",
        "",
        headline(data, summary),
        "",
        "Start-up: exec to the first `200` on `/hello`, median of "
        f"{method['startup_reps']} starts; skiff's is on an existing SQLite database and includes applying "
        f"migrations. For scale: spawning `/bin/true` and reaping it takes {method['spawn_true_ms']:.2f} ms here.",
        "",
    ]

    out += [
        "## Goals (issues 7, 15 and 19)",
        "",
        md_table(
            ["goal", "target", "measured (skiff vs peer)", "status"],
            [
                [
                    g["goal"],
                    g["target"],
                    g["measured"],
                    ("**met**" if g["status"] == "met" else "**missed**" if g["status"] == "missed" else "n/a")
                    + (f": {g['why']}" if g["why"] else ""),
                ]
                for g in goal_rows
            ],
        ),
        "",
    ]

    out += ["## Scenarios", ""]
    for p in data["plan"]:
        sc = p["scenario"]
        out += [f"### {p['title']} (`{sc}`)", ""]
        if sc in ("get-user-hot", "post-user", "mix"):
            out += [
                "skiff stores users in SQLite or PostgreSQL and its contract makes every acknowledged "
                "write survive a crash; gin keeps them in a map in memory and loses them all on exit: "
                "**gin is not durable**, so this compares unlike things on purpose.",
                "",
            ]
        for name in p["servers"]:
            if servers[name].get("about"):  # older results.json files have none
                out += [f"{label(name)} is {servers[name]['about']}", ""]
        rows = []
        for name in p["servers"]:
            s = summary.get(sc, {}).get(name)
            why = skipped.get((sc, name), "")
            if s is None:
                rows.append([label(name), *["n/a"] * 9, why or "not run"])
                continue
            remarks = [x for x in (notes.get((sc, name)), why) if x]
            if s["non_2xx"] or s["socket_errors"]:
                remarks.append(f"{s['non_2xx']} non-2xx, {s['socket_errors']} socket errors")
            cpu = s["server_cpu_pct"]["median"]
            rows.append(
                [
                    label(name),
                    cell(s["rps"], fmt_rps),
                    cell(s["p50_ms"], fmt_ms),
                    cell(s["p99_ms"], fmt_ms),
                    fmt_ms(s["p999_ms"]["median"]),
                    fmt_mib(s["peak_rss_kib"]["median"]),
                    f"{fmt_mib(s['idle_anon_kib']['median'])} / {fmt_mib(s['load_anon_kib']['median'])} / {fmt_mib(s['after_anon_kib']['median'])}",
                    f"{cpu:.0f}%",
                    fmt_rps(s["rps"]["median"] / (cpu / 100)) if cpu else "–",
                    f"{s['wrk_cpu_pct']['median']:.0f}%",
                    "; ".join(remarks),
                ]
            )
        out += spin_section(summary.get(sc, {}), p["servers"], label) if sc == "hello-under-lua" else []
        out += [
            md_table(
                [
                    "server",
                    "req/s",
                    "p50 ms",
                    "p99 ms",
                    "p99.9 ms",
                    "peak RSS MiB",
                    "private MiB idle / under load / after",
                    "server CPU",
                    "req per CPU-s",
                    "wrk CPU",
                    "notes",
                ],
                rows,
            ),
            "",
        ]

    out += [
        "## Start-up",
        "",
        md_table(
            ["server", "median ms", "min ms", "max ms", "samples ms"],
            [
                [
                    label(n),
                    f"{statistics.median(v):.1f}",
                    f"{min(v):.1f}",
                    f"{max(v):.1f}",
                    ", ".join(f"{x:.1f}" for x in v),
                ]
                for n, v in data["startup_ms"].items()
            ],
        ),
        "",
    ]
    out += [
        "## Sizes and versions",
        "",
        md_table(
            ["server", "bytes", "what is counted", "version"],
            [[i["label"], f"{i['size_bytes']:,}", i["size_what"], i["version"]] for i in servers.values()],
        ),
        "",
    ]
    about = [f"- {i['label']} is {i['about']}" for i in servers.values() if i.get("about")]
    out += [*about, ""] if about else []
    out += [
        f"Toolchain: {m['tools']['rustc']}"
        + (f"; {m['tools']['postgres']}" if m["tools"]["postgres"] else "")
        + ". Shared system libraries (libc and the like) are not counted in any size.",
        "",
    ]
    out += [
        "## Reading the figures",
        "",
        "- `server CPU` near 100% means the server used all of its one CPU: the figure is the server's. "
        "`wrk CPU` near 100% means the load generator was the limit, and the server may be faster than shown.",
        "- `req per CPU-s` is req/s divided by the server's CPU use: how much work one second of CPU does. "
        "It is steadier than req/s when other processes take CPU time from the server.",
        "- Peak RSS is VmHWM from `/proc/PID/status` at the end of the run (nginx: master + worker).",
        "- Raw figures of every run: [results.json](results.json). Chart: [report.png](report.png).",
        "",
    ]
    out += ["![requests per second and p99 latency per scenario](report.png)", ""]
    notes_md = BENCH / "NOTES.md"  # hand-written: what was profiled and tried, kept across runs
    if notes_md.exists():
        out += ["## Notes (from bench/NOTES.md)", "", notes_md.read_text().strip(), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------
# Chart.


def write_chart(data: dict, summary: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return False
    plan = [p for p in data["plan"] if summary.get(p["scenario"])]
    if not plan:
        return False

    def bars(p):
        """(label, cell, server) per bar; hello-under-lua gets an idle bar
        before each server's bar under spin."""
        out = []
        for n in p["servers"]:
            c = summary[p["scenario"]].get(n)
            if c is None:
                continue
            name = data["servers"][n]["label"]
            if "idle_p99_ms" in c:
                out.append((f"{name}, idle", {"rps": c["idle_rps"], "p99_ms": c["idle_p99_ms"]}, n))
                name = f"{name}, {c['spinners']['median']:.0f} scripts spinning"
            out.append((name, c, n))
        return out

    sizes = [len(bars(p)) + 1.5 for p in plan]
    fig, axes = plt.subplots(
        len(plan), 2, figsize=(12, 1.0 + 0.32 * sum(sizes)), squeeze=False, gridspec_kw={"height_ratios": sizes}
    )
    colours = {n: c for n, c in zip(data["servers"], plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False)}
    for row, p in enumerate(plan):
        labels, cells, names = zip(*bars(p), strict=True)
        for col, (metric, title) in enumerate(
            (("rps", "requests/s (more is better)"), ("p99_ms", "p99 latency, ms (less is better)"))
        ):
            ax = axes[row][col]
            med = [c[metric]["median"] for c in cells]
            lo = [c[metric]["median"] - c[metric]["min"] for c in cells]
            hi = [c[metric]["max"] - c[metric]["median"] for c in cells]
            ax.barh(range(len(names)), med, xerr=[lo, hi], color=[colours[n] for n in names], capsize=3)
            ax.set_yticks(range(len(names)), labels)
            ax.invert_yaxis()
            ax.set_title(f"{p['title']}: {title}", fontsize=9, loc="left")
            ax.tick_params(labelsize=8)
            for i, (v, c) in enumerate(zip(med, cells, strict=True)):  # beside the whisker
                text = f" {v:,.0f}" if metric == "rps" else f" {v:.2f}"
                ax.text(c[metric]["max"], i, text, va="center", fontsize=7)
            ax.margins(x=0.18)
    fig.suptitle(
        f"skiff bench, commit {data['meta']['skiff_commit']}, {data['meta']['started'][:10]} "
        "(bars: median; whiskers: min–max)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def update_readme(headline_md: str, goal_rows: list[dict], data: dict) -> None:
    readme = BENCH / "README.md"
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return
    goals_md = md_table(
        ["goal", "target", "measured", "status"],
        [[g["goal"], g["target"], g["measured"], g["status"]] for g in goal_rows],
    )
    notes = "".join(f"> **{note}**\n\n" for note in data["meta"]["notes"])
    block = (
        f"{README_START}\nFrom the last full run ({data['meta']['started'][:10]}, skiff commit "
        f"`{data['meta']['skiff_commit']}`; details, reasons for each n/a and caveats in "
        f"[REPORT.md](REPORT.md)):\n\n{notes}{headline_md}\n\n{goals_md}\n{README_END}"
    )
    head, rest = text.split(README_START, 1)
    readme.write_text(head + block + rest.split(README_END, 1)[1])


# Scenarios renamed since: results.json files written before keep working.
RENAMED = {"get-user": "get-user-hot"}


def renamed(data: dict) -> dict:
    for key in ("plan", "runs", "skipped", "notes"):
        for row in data.get(key, []):
            row["scenario"] = RENAMED.get(row["scenario"], row["scenario"])
    return data


def write(data: dict, out_dir: Path, update_readme_too: bool = False) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    data = renamed(data)
    summary = summarise(data)
    goal_rows = goals(data, summary)
    data = data | {"summary": summary, "goals": goal_rows}
    (out_dir / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    (out_dir / "REPORT.md").write_text(write_markdown(data, summary, goal_rows))
    write_chart(data, summary, out_dir / "report.png")
    if update_readme_too:
        update_readme(headline(data, summary), goal_rows, data)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else BENCH)
    raw = json.loads((target / "results.json").read_text())
    raw.pop("summary", None)
    raw.pop("goals", None)
    write(raw, target, update_readme_too=target.resolve() == BENCH)
