"""The scale scenario (issue 18): how reads, list pages, email lookups and
creates cost as the users table grows, for skiff on SQLite, skiff on
PostgreSQL and gin's map.

    bench/run scale                       10k, 100k and 1M users (about 25 min)
    bench/run scale --quick               smoke test: 2k and 20k users, 1 s runs
    bench/run scale --sizes 10000,100000 --servers skiff,gin

For each size the same users (UUIDv7 ids 1 ms apart, emails
scale-N@example.com) are generated once and loaded fast, not through the
API: into the SQLite file with Python's sqlite3 after `skiff migrate`, into
PostgreSQL with `COPY`, into gin's map from a file it reads at start-up
(SEED_FILE). Then, per size and server, one run each of: GET /users/{id} of
random ids across the whole table (a sample of up to 100k ids, so few land
in skiff's 4,096-user cache), GET /users?limit=100&after={random id},
GET /users?email={random email, case changed}, POST /users. gin's map has
no order, so no list pages (n/a). Method as in bench/README.md: the server
on CPU 0, wrk -t1 -c64 on CPU 1. Writes SCALE.md, scale.json and scale.png
(bench/ for a full run, target/bench/scale/ otherwise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import harness as h

SIZES_FULL = [10_000, 100_000, 1_000_000]
SIZES_QUICK = [2_000, 20_000]
SAMPLE = 100_000
SCENARIOS = [
    ("get-random", "GET /users/{id}, random ids", "get"),
    ("list-page", "GET /users?limit=100&after={id}", "list"),
    ("email", "GET /users?email=", "email"),
    ("create", "POST /users", "post"),
]
SERVERS = ["skiff", "skiff-pg", "gin"]
COLUMNS = (
    "id, email, email_key, account_enabled, display_name, given_name, surname, "
    "company_name, version, created_at, updated_at, email_key_version"
)
# skiff's own email-key version (src/db/model.rs, EMAIL_KEY_VERSION): rows
# loaded with an older one are re-keyed by `skiff serve`'s migration step
# (16 s at 1M users), which would sit inside the runs.
# The generated emails are ASCII, where the key (NFKC case folding) is lower().
EMAIL_KEY_VERSION = 2


def uuid7(ms: int) -> uuid.UUID:
    rand = int.from_bytes(os.urandom(10))
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return uuid.UUID(int=value)


class Dataset:
    """n users, the same for every server: a TSV (id, email) and samples."""

    def __init__(self, n: int, root: Path):
        self.n = n
        self.dir = root / f"users-{n}"
        self.dir.mkdir()
        start = int(time.time() * 1000) - n - 60_000
        self.rows = [(uuid7(start + i), f"scale-{i}@example.com", start + i) for i in range(n)]
        self.tsv = self.dir / "users.tsv"
        self.tsv.write_text("".join(f"{u}\t{e}\n" for u, e, _ in self.rows))
        rng = random.Random(n)
        picked = rng.sample(range(n), min(n, SAMPLE))
        self.ids = self.dir / "ids.txt"
        self.ids.write_text("".join(f"{self.rows[i][0]}\n" for i in picked))
        # Changed case: a lookup must ignore it.
        self.emails = self.dir / "emails.txt"
        self.emails.write_text("".join(f"Scale-{i}@Example.COM\n" for i in picked))

    def values(self):
        for u, email, ms in self.rows:
            yield (u.bytes, email, email.lower(), 1, "Scale User", "Scale", "User", "skiff bench", 1, ms, ms,
                   EMAIL_KEY_VERSION)

    def load_sqlite(self, path: Path) -> None:
        db = sqlite3.connect(path)
        try:
            with db:
                db.executemany(f"INSERT INTO users ({COLUMNS}) VALUES ({','.join('?' * 12)})", self.values())
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.close()

    def load_postgres(self, url: str) -> None:
        lines = (
            f"{u}\t{email}\t{email.lower()}\tt\tScale User\tScale\tUser\tskiff bench\t1\t{ms}\t{ms}\t{EMAIL_KEY_VERSION}\n"
            for u, email, ms in self.rows
        )
        data = "".join(lines)
        h.run_cmd(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", f"COPY users ({COLUMNS}) FROM STDIN"],
                  input=data, timeout=600)
        h.run_cmd(["psql", "-X", "-q", url, "-c", "ANALYZE users"], timeout=600)


def prepare(ctx: h.Context, name: str, data: Dataset) -> h.Running:
    """Loads data for server name and starts it."""
    server = h.SERVERS[name]
    workdir = h.fresh_workdir(ctx, f"{name}-{data.n}")
    env = h.base_env() | {"SKIFF_LOG": "warn"}
    if name == "skiff":
        env["DATABASE_URL"] = f"sqlite://{workdir}/skiff.db"
        h.run_cmd([str(server.binary), "migrate"], env=env, timeout=120)
        data.load_sqlite(workdir / "skiff.db")
    elif name == "skiff-pg":
        h.run_cmd([str(h.BENCH / "pg"), "reset", str(ctx.pg_dir), str(ctx.pg_port)], timeout=120)
        env["DATABASE_URL"] = ctx.pg_url
        h.run_cmd([str(server.binary), "migrate"], env=env, timeout=120)
        data.load_postgres(ctx.pg_url)
    else:
        server.extra_env = {"SEED_FILE": str(data.tsv)}
    try:
        return h.Running(ctx, server, workdir)
    finally:
        server.extra_env = {}


def check(r: h.Running, mode: str, data: Dataset) -> str | None:
    """None when the server answers the scenario; else why not (n/a or failed)."""
    first_id = data.ids.read_text().split("\n", 1)[0]
    first_email = data.emails.read_text().split("\n", 1)[0]
    path = {
        "get": f"/users/{first_id}",
        "list": f"/users?limit=100&after={first_id}",
        "email": f"/users?email={first_email}",
    }.get(mode)
    if path is None:
        return None
    status, _, body = h.request(r.port, "GET", path)
    if status in h.NOT_IMPLEMENTED:
        return f"n/a: GET {path.split('?')[0]} answers {status}"
    if status != 200:
        return f"failed: GET {path} answered {status}: {body[:200]!r}"
    if mode == "email" and first_email.lower() not in body.decode().lower():
        return f"failed: GET {path} did not find the user: {body[:200]!r}"
    return None


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 2k and 20k users, 1 s runs, no warm-up")
    p.add_argument("--sizes", help="table sizes, comma-separated (default 10000,100000,1000000)")
    p.add_argument("--servers", help=f"comma-separated, of {','.join(SERVERS)}")
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up before each run (default 3)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--skiff", type=Path, help="bench this skiff binary instead of building one")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header")
    p.add_argument("--out", type=Path)
    a = p.parse_args(argv)
    a.sizes = [int(s) for s in a.sizes.split(",")] if a.sizes else (SIZES_QUICK if a.quick else SIZES_FULL)
    a.servers = [s for s in (a.servers.split(",") if a.servers else SERVERS)]
    unknown = [s for s in a.servers if s not in SERVERS]
    if unknown:
        p.error(f"--servers: unknown {', '.join(unknown)}")
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    full = not (args.quick or argv)
    out_dir = args.out or (h.BENCH if full else h.BUILD / "scale")
    for sig in (h.signal.SIGINT, h.signal.SIGTERM, h.signal.SIGHUP):
        h.signal.signal(sig, h.on_signal)
    h.atexit.register(h.cleanup)
    os.sched_setaffinity(0, {int(h.WRK_CPU)})
    needs = {"wrk": "wrk", "psql": "postgresql-client"}
    for name in args.servers:
        needs |= h.SERVERS[name].needs
    h.ensure_apt(needs)
    h.BUILD.mkdir(parents=True, exist_ok=True)
    h._tmp_root = Path(tempfile.mkdtemp(prefix="scale-", dir=h.BUILD))
    h._tmp_root.chmod(0o711)
    for parent in (h.BUILD, h.BUILD.parent):
        parent.chmod(parent.stat().st_mode | 0o011)
    ns = argparse.Namespace(skiff=args.skiff, connections=args.connections)
    ctx = h.Context(
        args=ns,
        tmp=h._tmp_root,
        runs=1,
        duration=args.duration or (1 if args.quick else 10),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 3),
        startup_reps=0,
        seed_users=0,
    )
    for name in args.servers:
        h.SERVERS[name].build(ctx)
    if "skiff-pg" in args.servers:
        h.start_postgres(ctx)
    started = dt.datetime.now(dt.UTC)
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    rows, skipped = [], []
    for n in args.sizes:
        t0 = time.perf_counter()
        data = Dataset(n, ctx.tmp)
        h.log(f"{n:,} users generated in {time.perf_counter() - t0:.1f} s")
        for name in args.servers:
            t0 = time.perf_counter()
            try:
                r = prepare(ctx, name, data)
            except (h.BenchError, OSError, subprocess.TimeoutExpired) as exc:
                skipped.append({"size": n, "server": name, "scenario": "*", "reason": f"failed: {exc}"[:300]})
                h.log(f"{name} at {n:,}: FAILED to load or start: {exc}")
                continue
            h.log(f"{name}: {n:,} users loaded and serving in {time.perf_counter() - t0:.1f} s")
            try:
                for scenario, title, mode in SCENARIOS:
                    why = check(r, mode, data)
                    if why:
                        skipped.append({"size": n, "server": name, "scenario": scenario, "reason": why})
                        h.log(f"{scenario} / {name} at {n:,}: {why}")
                        continue
                    file = data.emails if mode == "email" else data.ids
                    sc = h.Scenario(scenario, title, [name], users=mode)
                    if ctx.warmup:
                        h.wrk(ctx, sc, r.port, ctx.warmup, file)
                    cpu0, server_cpu = h.cpu_busy_seconds(h.SERVER_CPU), h.cpu_seconds(r.pids())
                    out = h.wrk(ctx, sc, r.port, ctx.duration, file)
                    pids = r.pids()
                    cpu0, server_cpu = h.cpu_busy_seconds(h.SERVER_CPU) - cpu0, h.cpu_seconds(pids) - server_cpu
                    if r.proc.poll() is not None:
                        raise h.BenchError(f"{name} died during the run:\n{r.log_tail()}")
                    secs = out["duration_us"] / 1e6
                    row = {
                        "size": n,
                        "server": name,
                        "scenario": scenario,
                        "rps": (out["requests"] - out["errors"]["status"]) / secs,
                        "non_2xx": out["errors"]["status"],
                        "p50_ms": out["latency_us"]["p50"] / 1000,
                        "p99_ms": out["latency_us"]["p99"] / 1000,
                        "peak_rss_kib": h.vm_hwm_kib(pids),
                        "server_cpu_pct": 100 * server_cpu / secs,
                        "cpu0_others_pct": max(0.0, 100 * (cpu0 - server_cpu) / secs),
                    }
                    rows.append(row)
                    h.log(
                        f"{n:,} {name} {scenario}: {row['rps']:,.0f} req/s, p99 {row['p99_ms']:.2f} ms, "
                        f"RSS {row['peak_rss_kib'] / 1024:.1f} MiB, CPU 0 others {row['cpu0_others_pct']:.0f}%"
                        + (f", {row['non_2xx']} non-2xx" if row["non_2xx"] else "")
                    )
            except (h.BenchError, OSError, subprocess.TimeoutExpired) as exc:
                skipped.append({"size": n, "server": name, "scenario": "*", "reason": f"failed: {exc}"[:300]})
                h.log(f"{name} at {n:,} FAILED: {exc}")
            finally:
                r.stop()
        shutil.rmtree(data.dir, ignore_errors=True)
    data = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": h.shlex.join(["bench/run", "scale", *argv]),
            "skiff_version": h.SERVERS["skiff"].version if "skiff" in args.servers else "",
            "bench_commit": h.git_commit(),
            "notes": args.note,
            "host": h.host_info(ctx.tmp),
            "loadavg_before": loadavg_before,
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
            "duration_s": ctx.duration,
            "warmup_s": ctx.warmup,
            "connections": args.connections,
            "sizes": args.sizes,
        },
        "runs": rows,
        "skipped": skipped,
    }
    write(data, out_dir, args.servers)
    h.log(f"wrote {out_dir}/SCALE.md, scale.json and scale.png")
    return 0


LABELS = {"skiff": "skiff (SQLite)", "skiff-pg": "skiff (PostgreSQL)", "gin": "gin (map, not durable)"}


def write(data: dict, out_dir: Path, servers: list[str]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "scale.json").write_text(json.dumps(data, indent=1) + "\n")
    m = data["meta"]
    by = {(r["size"], r["server"], r["scenario"]): r for r in data["runs"]}
    why = {(s["size"], s["server"], s["scenario"]): s["reason"] for s in data["skipped"]}
    out = ["# skiff at scale: cost against table size", ""]
    out += [f"> **{note}**\n" for note in m["notes"]]
    out += [
        f"`{m['command']}`, {m['started']} to {m['finished']}; {m['skiff_version']}; host: "
        f"{m['host']['cpus']} CPUs, {m['host']['cpu']}; load average before {' '.join(m['loadavg_before'])}, "
        f"after {' '.join(m['loadavg_after'])}. One run of {m['duration_s']} s per cell after "
        f"{m['warmup_s']} s of warm-up, wrk -t1 -c{m['connections']} on CPU 1, the server (and PostgreSQL) "
        "on CPU 0. gin keeps its users in a map: not durable. Method: bench/scale.py.",
        "",
    ]
    for scenario, title, _ in SCENARIOS:
        out += [f"## {title} (`{scenario}`)", ""]
        out += ["| users | " + " | ".join(f"{LABELS[s]} req/s | p99 ms" for s in servers) + " |"]
        out += ["|---:|" + "---:|---:|" * len(servers)]
        for n in m["sizes"]:
            cells = []
            for s in servers:
                r = by.get((n, s, scenario))
                if r:
                    cells += [f"{r['rps']:,.0f}", f"{r['p99_ms']:.2f}"]
                else:
                    reason = why.get((n, s, scenario)) or why.get((n, s, "*")) or "not run"
                    cells += [reason.split(":")[0], ""]
            out.append(f"| {n:,} | " + " | ".join(cells) + " |")
        out.append("")
    if data["skipped"]:
        out += ["## Not measured", ""]
        out += [f"- {s['server']} at {s['size']:,}, {s['scenario']}: {s['reason']}" for s in data["skipped"]]
        out.append("")
    if chart(data, servers, out_dir / "scale.png"):
        out += ["![req/s and p99 against table size](scale.png)", ""]
    (out_dir / "SCALE.md").write_text("\n".join(out))


def chart(data: dict, servers: list[str], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no chart", file=sys.stderr)
        return False
    fig, axes = plt.subplots(2, len(SCENARIOS), figsize=(4 * len(SCENARIOS), 7), squeeze=False)
    for col, (scenario, title, _) in enumerate(SCENARIOS):
        for s in servers:
            pts = sorted((r["size"], r["rps"], r["p99_ms"]) for r in data["runs"]
                         if r["server"] == s and r["scenario"] == scenario)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1] for p in pts], marker="o", label=LABELS[s])
            axes[1][col].plot(xs, [p[2] for p in pts], marker="o", label=LABELS[s])
        axes[0][col].set_title(title, fontsize=9)
        for row, unit in ((0, "req/s"), (1, "p99 ms")):
            ax = axes[row][col]
            ax.set_xscale("log")
            ax.set_xlabel("users in the table")
            ax.set_ylabel(unit)
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except h.BenchError as exc:
        h.log(f"bench failed: {exc}")
        sys.exit(1)
