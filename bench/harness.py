#!/usr/bin/env python3
"""skiff's benchmark harness (issue 7): builds skiff and its peers, runs every
scenario with wrk, and writes REPORT.md, results.json and report.png.

Run it through `bench/run`, which sets up the chart's virtualenv first.
The method is described in bench/README.md; in short: one server at a time,
the server on CPU 0 and wrk on CPU 1, 64 connections, runs interleaved across
servers, medians with min and max.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = REPO / "target" / "bench"  # peers' binaries and scratch output
WRK_DIR = BENCH / "wrk"

SERVER_CPU, WRK_CPU = "0", "1"
START_DEADLINE_S = 20.0  # exec to first 200, or the start counts as failed
SEED_USERS_FULL, SEED_USERS_QUICK = 1000, 200
NOT_IMPLEMENTED = {404, 405, 501}  # skiff without the feature yet: "n/a"


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A step that failed in a way that stops the whole bench."""


# --------------------------------------------------------------------------
# Processes: every one we start is registered, and all are stopped on exit,
# on Ctrl-C, on SIGTERM and on failure.

_children: list[subprocess.Popen] = []
_pg_dir: Path | None = None
_tmp_root: Path | None = None


def spawn(argv: list[str], cpu: str, **kwargs) -> subprocess.Popen:
    """Starts argv pinned to one CPU. Rather than exec'ing through taskset,
    which would add its own exec to every start-up figure, the harness moves
    itself to that CPU for the fork (a child inherits its parent's affinity)
    and back right after."""
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(cpu)})
    try:
        proc = subprocess.Popen(argv, **kwargs)
    finally:
        os.sched_setaffinity(0, home)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in _children:
        _children.remove(proc)


def cleanup() -> None:
    for proc in list(_children):
        try:
            stop(proc, grace=3.0)
        except Exception as exc:  # keep cleaning the others
            log(f"could not stop pid {proc.pid}: {exc}")
    global _pg_dir, _tmp_root
    if _pg_dir is not None:
        subprocess.run([str(BENCH / "pg"), "stop", str(_pg_dir)], timeout=60, check=False)
        _pg_dir = None
    if _tmp_root is not None:
        shutil.rmtree(_tmp_root, ignore_errors=True)
        _tmp_root = None


def on_signal(signum, _frame):
    log(f"{signal.Signals(signum).name}: stopping every process the bench started")
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------
# Small helpers: ports, /proc, HTTP.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """pid and its descendants (nginx: master and worker)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(parents.get(p, []))
    return tree


def vm_hwm_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def rss_parts_kib(pids: list[int]) -> tuple[int, int]:
    """Resident memory now: private (RssAnon) and file-backed (RssFile)."""
    anon = file = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    anon += int(line.split()[1])
                elif line.startswith("RssFile:"):
                    file += int(line.split()[1])
        except OSError:
            pass
    return anon, file


def cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime + stime, all threads
    return total / ticks


def cpu_busy_seconds(cpu: str) -> float:
    """Busy time of one CPU since boot, from /proc/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            v = [int(x) for x in line.split()[1:]]
            idle = v[3] + v[4]
            return (sum(v[:8]) - idle) / ticks
    raise BenchError(f"cpu{cpu} not in /proc/stat")


def request(port: int, method: str, path: str, body: dict | None = None, timeout=10.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def wait_first_200(port: int, path: str, proc: subprocess.Popen, deadline: float) -> None:
    """Polls in a tight loop (no sleep) until GET path answers 200."""
    req = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    while True:
        if time.perf_counter() > deadline:
            raise BenchError(f"no 200 from {path} within {START_DEADLINE_S:.0f} s")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(req)
                status = s.recv(64)
            if status.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
                return
        except OSError:
            pass
        if proc.poll() is not None:
            raise BenchError(f"exited with status {proc.returncode} before answering")


def run_cmd(argv, timeout=1800, **kwargs) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if out.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} failed:\n{out.stdout[-2000:]}{out.stderr[-4000:]}")
    return out.stdout


def first_line(argv) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# --------------------------------------------------------------------------
# Tools the bench needs: installed with apt when missing (as root).


def ensure_apt(packages: dict[str, str]) -> None:
    """packages: {probe path or command: Debian package}."""
    missing = sorted(
        {
            pkg
            for probe, pkg in packages.items()
            if not (Path(probe).exists() if probe.startswith("/") else shutil.which(probe))
        }
    )
    if not missing:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing tools; install them with: apt-get install {' '.join(missing)}")
    log(f"installing with apt: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run_cmd(["apt-get", "update", "-qq"], env=env)
    run_cmd(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


# --------------------------------------------------------------------------
# Servers: skiff and the peers.


@dataclass
class Server:
    name: str
    label: str
    needs: dict[str, str] = field(default_factory=dict)  # apt probes
    binary: Path | None = None
    size_bytes: int = 0
    size_what: str = ""
    version: str = ""
    about: str = ""  # a line for the report, where the label is not enough

    def build(self, ctx: Context) -> None: ...

    def command(self, ctx: Context, port: int, workdir: Path) -> tuple[list[str], dict]:
        raise NotImplementedError

    def before_start(self, ctx: Context, workdir: Path) -> None:
        """Fresh state for a measured run (a new database)."""


def base_env() -> dict:
    # A clean environment: no RUST_LOG, DATABASE_URL or GOMAXPROCS of the caller.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8"}


class Skiff(Server):
    """skiff as users run it: the static musl binary the image ships, with
    its default settings (access log on). `glibc` and `log` make the extra
    rows that show what each costs."""

    def __init__(self, name="skiff", label="skiff (SQLite)", postgres=False, glibc=False, log=None):
        super().__init__(name, label)
        self.postgres, self.glibc, self.log = postgres, glibc, log
        if postgres:
            # Debian keeps initdb and pg_ctl off PATH; bench/pg finds them.
            self.needs = {"/usr/bin/pg_ctlcluster": "postgresql", "psql": "postgresql-client"}

    def build(self, ctx):
        if ctx.args.skiff and not self.glibc:
            self.binary = ctx.args.skiff.resolve()
            self.size_what = f"{ctx.args.skiff} (given with --skiff)"
        elif self.glibc:
            self.binary = REPO / "target" / "release" / "skiff"
            if not ctx.built_glibc:
                log("building skiff (glibc): cargo build --release --locked")
                run_cmd(["cargo", "build", "--release", "--locked"], cwd=REPO, timeout=3600)
                ctx.built_glibc = True
            self.size_what = "target/release/skiff (glibc target, release profile)"
        else:
            if not ctx.built_skiff:
                log("building skiff: scripts/build-static (the static musl binary the image ships)")
                out = run_cmd([str(REPO / "scripts" / "build-static")], cwd=REPO, timeout=3600)
                ctx.static_skiff = Path(out.strip().splitlines()[-1])
                ctx.built_skiff = True
            self.binary = ctx.static_skiff
            self.size_what = "target/static/x86_64/skiff (static musl, release profile: LTO, stripped)"
        self.size_bytes = self.binary.stat().st_size
        self.version = first_line([str(self.binary), "version"])

    def before_start(self, ctx, workdir):
        if self.postgres:
            run_cmd([str(BENCH / "pg"), "reset", str(ctx.pg_dir), str(ctx.pg_port)], timeout=120)

    def command(self, ctx, port, workdir):
        (workdir / "lua").mkdir(exist_ok=True)
        db = ctx.pg_url if self.postgres else f"sqlite://{workdir}/skiff.db"
        env = base_env() | {
            "PORT": str(port),
            "SKIFF_BIND": "127.0.0.1",
            "DATABASE_URL": db,
            "SKIFF_SHUTDOWN_GRACE": "1s",
            "SKIFF_SCRIPTS_DIR": str(workdir / "lua"),
            "SKIFF_IP_UPSTREAM": "http://127.0.0.1:9",  # never called; loopback only
        }
        if self.log:
            env["SKIFF_LOG"] = self.log
        return [str(self.binary), "serve"], env


# Go libraries from Debian's packaged sources, {import path: package}: built
# offline with GO111MODULE=off GOPATH=/usr/share/gocode.
GIN = {"github.com/gin-gonic/gin": "golang-github-gin-gonic-gin-dev"}
GOPHER_LUA = {"github.com/yuin/gopher-lua": "golang-github-yuin-gopher-lua-dev"}


class GoServer(Server):
    def __init__(self, name, label, src, debian: dict[str, str] | None = None, about=""):
        super().__init__(name, label, needs={"go": "golang-go"}, about=about)
        self.src, self.debian = src, debian or {}
        self.gopath_mode = bool(self.debian)
        for path, pkg in self.debian.items():
            self.needs[f"/usr/share/gocode/src/{path}"] = pkg

    def build(self, ctx):
        self.binary = BUILD / "bin" / self.name
        env = dict(os.environ, GOPROXY="off", GOTOOLCHAIN="local", CGO_ENABLED="0")
        if self.gopath_mode:
            # gin and its dependencies come from Debian's packaged sources.
            env |= {"GO111MODULE": "off", "GOPATH": "/usr/share/gocode", "GOFLAGS": ""}
        else:
            env |= {"GO111MODULE": "on", "GOFLAGS": "-mod=mod"}
        log(f"building {self.name}: go build")
        run_cmd(
            ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(self.binary), "."],
            cwd=BENCH / "peers" / self.src,
            env=env,
            timeout=900,
        )
        self.size_bytes = self.binary.stat().st_size
        self.size_what = "static binary, stripped (go build -ldflags='-s -w')"
        self.version = first_line(["go", "version"])
        for path, pkg in self.debian.items():
            version = first_line(["dpkg-query", "-W", "-f=${Version}", pkg])
            self.version += f", {path.rsplit('/', 1)[-1]} {version} (Debian)"

    def command(self, ctx, port, workdir):
        # extra_env: e.g. SEED_FILE for gin in the scale scenario.
        return [str(self.binary)], base_env() | {"PORT": str(port)} | getattr(self, "extra_env", {})


class Express(Server):
    def __init__(self):
        super().__init__("express", "Node express", needs={"node": "nodejs", "npm": "npm"})
        self.dir = BENCH / "peers" / "node"

    def build(self, ctx):
        modules = self.dir / "node_modules"
        lock = self.dir / "package-lock.json"
        stamp = modules / ".package-lock.json"  # npm rewrites it on every install
        if not stamp.exists() or stamp.stat().st_mtime < lock.stat().st_mtime:
            log("installing express: npm ci")
            run_cmd(["npm", "ci", "--no-audit", "--no-fund"], cwd=self.dir, timeout=600)
        node = Path(shutil.which("node")).resolve()
        self.binary = node
        self.size_bytes = dir_size(self.dir / "server.js") + dir_size(modules) + node.stat().st_size
        self.size_what = "node executable + server.js + node_modules"
        express = json.loads((modules / "express" / "package.json").read_text())["version"]
        self.version = f"node {first_line(['node', '--version'])}, express {express}"

    def command(self, ctx, port, workdir):
        env = base_env() | {"PORT": str(port), "NODE_ENV": "production"}
        return [str(self.binary), str(self.dir / "server.js")], env


class Nginx(Server):
    MODULES = Path("/usr/lib/nginx/modules")

    def __init__(self):
        super().__init__(
            "nginx",
            "nginx + Lua",
            needs={"nginx": "nginx", str(self.MODULES / "ngx_http_lua_module.so"): "libnginx-mod-http-lua"},
        )

    def build(self, ctx):
        self.binary = Path(shutil.which("nginx"))
        files = [self.binary, self.MODULES / "ndk_http_module.so", self.MODULES / "ngx_http_lua_module.so"]
        luajit = run_cmd(["ldd", str(self.MODULES / "ngx_http_lua_module.so")])
        files += [Path(m) for m in re.findall(r"=> (\S*luajit\S*)", luajit)]
        self.size_bytes = sum(f.resolve().stat().st_size for f in files) + dir_size(Path("/usr/share/lua/5.1/resty"))
        self.size_what = "nginx + ndk and lua modules + libluajit + lua-resty-core"
        self.version = (
            first_line(["nginx", "-v"])
            + ", lua module "
            + first_line(["dpkg-query", "-W", "-f=${Version}", "libnginx-mod-http-lua"])
        )

    def command(self, ctx, port, workdir):
        (workdir / "tmp").mkdir(exist_ok=True)
        (workdir / "logs").mkdir(exist_ok=True)
        workdir.chmod(0o755)  # the worker runs as nobody
        conf = (BENCH / "peers" / "nginx" / "nginx.conf.in").read_text().replace("@PORT@", str(port))
        (workdir / "nginx.conf").write_text(conf)
        return [str(self.binary), "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"], base_env()


SERVERS: dict[str, Server] = {
    s.name: s
    for s in [
        Skiff(),
        Skiff("skiff-pg", "skiff (PostgreSQL)", postgres=True),
        Skiff("skiff-quiet", "skiff, SKIFF_LOG=warn (no access log)", log="warn"),
        Skiff("skiff-glibc", "skiff, glibc build", glibc=True),
        GoServer("go-nethttp", "Go net/http", "go-nethttp"),
        GoServer("gin", "Go gin (in-memory)", "go-gin", debian=GIN),
        GoServer(
            "gin-lua",
            "Go gin + gopher-lua (new state per request)",
            "go-gin-lua",
            debian=GIN | GOPHER_LUA,
            about="seed 001's own shape (gin, a new Lua state per request, a Go `response` function the "
            "script calls), with gopher-lua (pure Go, Lua 5.1) standing in for the guide's cgo binding of C Lua, "
            "which Debian does not package.",
        ),
        Express(),
        Nginx(),
    ]
}


@dataclass
class Scenario:
    name: str
    title: str
    servers: list[str]
    path: str = "/hello"  # GET scenarios
    users: str | None = None  # get, post or mix (bench/wrk/users.lua)
    spinners: int = 0  # clients requesting /lua/spin (a `while true do end`) during the load


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "hello",
            "GET /hello",
            ["skiff", "skiff-quiet", "skiff-glibc", "go-nethttp", "gin", "express", "nginx"],
            "/hello",
        ),
        Scenario("time", "GET /time", ["skiff", "gin"], "/time"),
        Scenario("lua", "GET /lua", ["skiff", "nginx", "gin-lua"], "/lua"),
        # /hello idle, then on the same server while 50 clients keep a script
        # that never ends spinning to its time limit (issue 15).
        Scenario("hello-under-lua", "GET /hello while 50 Lua scripts spin", ["skiff"], "/hello", spinners=50),
        # A hot set: 1,000 users (200 with --quick), all in skiff's read
        # cache. How reads fare as the table grows is `bench/run scale`.
        Scenario(
            "get-user-hot",
            "GET /users/{id}, hot set of 1,000 users",
            ["skiff", "skiff-pg", "gin"],
            users="get",
        ),
        Scenario("post-user", "POST /users", ["skiff", "skiff-pg", "gin"], users="post"),
        Scenario("mix", "90% GET /users/{id}, 10% POST /users", ["skiff", "skiff-pg", "gin"], users="mix"),
    ]
}

EXPECTED_BODY = {"/hello": b"hello", "/lua": b"hello world"}
# The spinners' script, put in skiff's scripts directory as spin.lua: it runs
# until skiff's time limit (SKIFF_LUA_TIMEOUT, default 100 ms) ends it: a 503.
SPIN_SCRIPT = "while true do end\n"
SPIN_RAMP_S = 1  # the spinners run this long before /hello is measured, and after


# --------------------------------------------------------------------------
# A run of the bench.


@dataclass
class Context:
    args: argparse.Namespace
    tmp: Path
    runs: int
    duration: int
    warmup: int
    startup_reps: int
    seed_users: int
    built_skiff: bool = False
    built_glibc: bool = False
    static_skiff: Path | None = None
    pg_dir: Path | None = None
    pg_port: int = 0
    pg_url: str = ""
    results: list[dict] = field(default_factory=list)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    startup: dict[str, list[float]] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)  # server: why it cannot start
    counter: int = 0


class Running:
    """A server started on CPU 0, answering 200 on /hello."""

    def __init__(self, ctx: Context, server: Server, workdir: Path):
        self.server, self.port, self.workdir = server, free_port(), workdir
        argv, env = server.command(ctx, self.port, workdir)
        self.log_path = workdir / f"{server.name}.log"
        with open(self.log_path, "ab") as logf:
            t0 = time.perf_counter()
            self.proc = spawn(
                argv, SERVER_CPU, env=env, cwd=workdir, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            wait_first_200(self.port, "/hello", self.proc, t0 + START_DEADLINE_S)
        except BenchError as exc:
            self.stop()
            raise BenchError(f"{server.name} did not start: {exc}\n{self.log_tail()}") from None
        self.startup_s = time.perf_counter() - t0
        pinned = os.sched_getaffinity(self.proc.pid)
        if pinned != {int(SERVER_CPU)}:
            self.stop()
            raise BenchError(f"{server.name} runs on CPUs {pinned}, not {SERVER_CPU}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        stop(self.proc)


def fresh_workdir(ctx: Context, label: str) -> Path:
    ctx.counter += 1
    d = ctx.tmp / f"{ctx.counter:03d}-{label}"
    d.mkdir()
    return d


def start(ctx: Context, server: Server, workdir: Path | None = None) -> Running:
    workdir = workdir or fresh_workdir(ctx, server.name)
    server.before_start(ctx, workdir)
    return Running(ctx, server, workdir)


def measure_startup(ctx: Context, names: list[str]) -> None:
    """Exec to first 200, a few times each, on an existing database (skiff
    applies its pending migrations at every start, so this includes them)."""
    dirs = {}
    for rep in range(-1, ctx.startup_reps):
        for name in names:
            if name in ctx.broken:
                continue
            server = SERVERS[name]
            try:
                if rep < 0:  # unmeasured: creates and migrates the database
                    dirs[name] = fresh_workdir(ctx, f"startup-{name}")
                    server.before_start(ctx, dirs[name])
                r = Running(ctx, server, dirs[name])
                r.stop()
            except (BenchError, OSError) as exc:
                ctx.broken[name] = f"failed to start: {str(exc).splitlines()[0]}"
                log(f"{name} FAILED to start, left out of every scenario: {exc}")
                continue
            if rep >= 0:
                ctx.startup.setdefault(name, []).append(r.startup_s * 1000)
    for name in ctx.startup:
        s = ctx.startup[name]
        log(f"start-up {name}: median {statistics.median(s):.1f} ms (min {min(s):.1f}, max {max(s):.1f})")


def launch_overhead_ms() -> float:
    """Spawning /bin/true and reaping it, the way servers are spawned: the
    floor under every start-up figure."""
    samples = []
    for _ in range(7):
        t0 = time.perf_counter()
        proc = spawn(["/bin/true"], SERVER_CPU, stdin=subprocess.DEVNULL)
        proc.wait(10)
        samples.append((time.perf_counter() - t0) * 1000)
        stop(proc)
    return statistics.median(samples)


def probe(ctx: Context, scenario: Scenario, r: Running) -> str | None:
    """None when the server does what the scenario measures; otherwise why not."""
    port = r.port
    if scenario.users:
        status, _, body = request(port, "POST", "/users", {"email": f"probe-{time.time_ns()}@example.com"})
        if status in NOT_IMPLEMENTED:
            return f"n/a: POST /users answers {status}"
        if status != 201:
            return f"failed: POST /users answered {status}: {body[:200]!r}"
        if scenario.users == "post":
            return None
        uid = json.loads(body)["id"]
        status, _, body = request(port, "GET", f"/users/{uid}")
        if status in NOT_IMPLEMENTED:
            return f"n/a: GET /users/{{id}} of a created user answers {status}"
        if status != 200:
            return f"failed: GET /users/{{id}} of a created user answered {status}"
        return None
    status, _, body = request(port, "GET", scenario.path)
    if status in NOT_IMPLEMENTED:
        return f"n/a: GET {scenario.path} answers {status}"
    if status != 200:
        return f"failed: GET {scenario.path} answered {status}"
    want = EXPECTED_BODY.get(scenario.path)
    if want is not None and body.strip() != want:
        return f"failed: GET {scenario.path} answered {body[:100]!r}, not {want!r}"
    if scenario.path == "/time" and b"Asia/Tokyo" not in body:
        return f"failed: GET /time answered {body[:200]!r}"
    if scenario.spinners:
        status, _, body = request(port, "GET", "/lua/spin")
        if status in NOT_IMPLEMENTED:
            return f"n/a: GET /lua/spin (a script in the scripts directory) answers {status}"
        if status != 503:
            return f"failed: GET /lua/spin (`{SPIN_SCRIPT.strip()}`) answered {status}, not 503: {body[:200]!r}"
    if scenario.name == "lua" and isinstance(r.server, Skiff):
        _, _, metrics = request(port, "GET", "/metrics")
        if b"skiff_lua_runs_total" not in metrics:
            ctx.notes[(scenario.name, r.server.name)] = (
                "placeholder: /metrics counts no Lua run, so this skiff answers /lua without running Lua"
            )
    return None


def seed_users(ctx: Context, r: Running) -> Path:
    """Creates users over HTTP and returns a file of their ids."""
    conn = http.client.HTTPConnection("127.0.0.1", r.port, timeout=30)
    ids = []
    try:
        for i in range(ctx.seed_users):
            body = {"email": f"seed-{i}@example.com", "displayName": f"Seed {i}", "accountEnabled": True}
            conn.request("POST", "/users", json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 201:
                raise BenchError(f"seeding {r.server.name}: POST /users answered {resp.status}: {data[:200]!r}")
            ids.append(json.loads(data)["id"])
    finally:
        conn.close()
    path = r.workdir / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def wrk(
    ctx: Context,
    scenario: Scenario,
    port: int,
    seconds: int,
    ids: Path | None,
    during: Callable[[], object] | None = None,
) -> dict:
    """One wrk run; `during`, if given, is called at 90% of it (while the
    load is on) and its value kept as the result's "during"."""
    if scenario.users:
        script, url = WRK_DIR / "users.lua", f"http://127.0.0.1:{port}"
        extra = ["--", scenario.users, str(ids or "/dev/null"), f"{os.getpid()}x{time.time_ns()}"]
    else:
        script, url, extra = WRK_DIR / "get.lua", f"http://127.0.0.1:{port}{scenario.path}", []
    argv = [
        "wrk",
        "-t1",
        f"-c{ctx.args.connections}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        url,
        *extra,
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = spawn(
        argv,
        WRK_CPU,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=base_env() | {"BENCH_LUA_DIR": str(WRK_DIR)},
    )
    sample = None
    try:
        try:
            out, err = proc.communicate(timeout=seconds * 0.9 if during else seconds + 60)
        except subprocess.TimeoutExpired:
            if not during:
                raise
            sample = during()
            out, err = proc.communicate(timeout=seconds + 60)
    finally:
        stop(proc)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({proc.returncode}):\n{out[-1500:]}{err[-1500:]}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    result["wrk_cpu_s"] = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    result["during"] = sample
    return result


def start_spinners(ctx: Context, scenario: Scenario, port: int, seconds: int) -> subprocess.Popen:
    """A second wrk, bounded by -d like the first: scenario.spinners
    connections, each keeping one GET /lua/spin in flight. It shares wrk's
    CPU; at a few hundred requests/s it needs little of it."""
    argv = [
        "wrk",
        "-t1",
        f"-c{scenario.spinners}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(WRK_DIR / "spin.lua"),
        f"http://127.0.0.1:{port}/lua/spin",
    ]
    return spawn(argv, WRK_CPU, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 env=base_env() | {"BENCH_LUA_DIR": str(WRK_DIR)})


def finish_spinners(proc: subprocess.Popen, seconds: int) -> dict:
    try:
        out, err = proc.communicate(timeout=seconds + 60)
    finally:
        stop(proc)
    line = next((ln for ln in out.splitlines() if ln.startswith("SPIN_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"spinners' wrk failed ({proc.returncode}):\n{out[-1500:]}{err[-1500:]}")
    return json.loads(line.removeprefix("SPIN_JSON "))


def measured_run(ctx: Context, scenario: Scenario, server: Server, run_no: int) -> None:
    key = (scenario.name, server.name)
    if server.name in ctx.broken:
        ctx.skipped[key] = ctx.broken[server.name]
    if key in ctx.skipped:
        return
    workdir = fresh_workdir(ctx, server.name)
    if scenario.spinners:
        (workdir / "lua").mkdir()
        (workdir / "lua" / "spin.lua").write_text(SPIN_SCRIPT)
    r = start(ctx, server, workdir)
    spinners, idle, spun = None, None, None
    try:
        why = probe(ctx, scenario, r)
        if why:
            ctx.skipped[key] = why
            log(f"{scenario.name} / {server.name}: skipped ({why})")
            return
        ids = seed_users(ctx, r) if scenario.users in ("get", "mix") else None
        idle_anon, idle_file = rss_parts_kib(r.pids())
        if ctx.warmup:
            wrk(ctx, scenario, r.port, ctx.warmup, ids)
        if scenario.spinners:
            # The same server, first idle, then with the spinners going; the
            # run's figures are those under spin, the idle ones sit beside.
            idle = wrk(ctx, scenario, r.port, ctx.duration, ids)
            spin_s = ctx.duration + 2 * SPIN_RAMP_S
            spinners = start_spinners(ctx, scenario, r.port, spin_s)
            time.sleep(SPIN_RAMP_S)
        pids = r.pids()
        cpu0, server_cpu = cpu_busy_seconds(SERVER_CPU), cpu_seconds(pids)
        # Private and file-backed memory while the load is on, and again
        # once it has ended (connections closed: what the allocator keeps).
        out = wrk(ctx, scenario, r.port, ctx.duration, ids, lambda: rss_parts_kib(r.pids()))
        pids = r.pids()
        cpu0, server_cpu = cpu_busy_seconds(SERVER_CPU) - cpu0, cpu_seconds(pids) - server_cpu
        rss = vm_hwm_kib(pids)
        anon, file = out["during"] or rss_parts_kib(pids)
        after_anon, _ = rss_parts_kib(pids)
        if spinners is not None:
            spun = finish_spinners(spinners, spin_s)
        if r.proc.poll() is not None:
            raise BenchError(f"{server.name} died during the run:\n{r.log_tail()}")
    finally:
        if spinners is not None:
            stop(spinners)
        r.stop()
    secs = out["duration_us"] / 1e6
    e = out["errors"]
    ok = out["requests"] - e["status"]
    row = {
        "scenario": scenario.name,
        "server": server.name,
        "run": run_no,
        "rps": ok / secs,
        "requests": out["requests"],
        "non_2xx": e["status"],
        "socket_errors": e["connect"] + e["read"] + e["write"] + e["timeout"],
        "p50_ms": out["latency_us"]["p50"] / 1000,
        "p90_ms": out["latency_us"]["p90"] / 1000,
        "p99_ms": out["latency_us"]["p99"] / 1000,
        "p999_ms": out["latency_us"]["p999"] / 1000,
        "max_ms": out["latency_us"]["max"] / 1000,
        "mean_ms": out["latency_us"]["mean"] / 1000,
        "peak_rss_kib": rss,
        "idle_anon_kib": idle_anon,
        "idle_file_kib": idle_file,
        "load_anon_kib": anon,
        "load_file_kib": file,
        "after_anon_kib": after_anon,
        "duration_s": secs,
        "server_cpu_pct": 100 * server_cpu / secs,
        "wrk_cpu_pct": 100 * out["wrk_cpu_s"] / secs,
        # CPU 0 busy time that was not the server's: other processes on the machine.
        "cpu0_others_pct": max(0.0, 100 * (cpu0 - server_cpu) / secs),
        "startup_ms": r.startup_s * 1000,
    }
    if spun is not None:
        row |= {
            "idle_rps": (idle["requests"] - idle["errors"]["status"]) / (idle["duration_us"] / 1e6),
            "idle_p50_ms": idle["latency_us"]["p50"] / 1000,
            "idle_p99_ms": idle["latency_us"]["p99"] / 1000,
            "idle_p999_ms": idle["latency_us"]["p999"] / 1000,
            "p99_delta_ms": (out["latency_us"]["p99"] - idle["latency_us"]["p99"]) / 1000,
            "spinners": scenario.spinners,
            "spin_requests": spun["requests"],
            "spin_statuses": spun["statuses"],  # {"503": n}: the time limit held
            "spin_socket_errors": sum(spun["errors"][k] for k in ("connect", "read", "write", "timeout")),
            "spin_p50_ms": spun["latency_us"]["p50"] / 1000,
            "spin_max_ms": spun["latency_us"]["max"] / 1000,
        }
        log(
            f"{scenario.name} run {run_no} {server.name}: /hello p99 idle {row['idle_p99_ms']:.2f} ms, "
            f"under {scenario.spinners} spinners {row['p99_ms']:.2f} ms ({row['p99_delta_ms']:+.2f} ms); "
            f"spinners got {spun['statuses']}, {row['spin_socket_errors']} socket errors, "
            f"median {row['spin_p50_ms']:.0f} ms"
        )
    ctx.results.append(row)
    log(
        f"{scenario.name} run {run_no} {server.name}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
        f"p99 {row['p99_ms']:.2f} ms, peak RSS {rss / 1024:.1f} MiB, server CPU {row['server_cpu_pct']:.0f}%, "
        f"wrk CPU {row['wrk_cpu_pct']:.0f}%" + (f", {e['status']} non-2xx" if e["status"] else "")
    )


def start_postgres(ctx: Context) -> None:
    global _pg_dir
    ctx.pg_dir, ctx.pg_port = ctx.tmp / "pg", free_port()
    log(f"starting PostgreSQL on 127.0.0.1:{ctx.pg_port} (CPU {SERVER_CPU}, beside the server it serves)")
    _pg_dir = ctx.pg_dir
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {int(SERVER_CPU)})  # inherited by the postmaster and its backends
    try:
        ctx.pg_url = run_cmd([str(BENCH / "pg"), "start", str(ctx.pg_dir), str(ctx.pg_port)], timeout=120).strip()
    finally:
        os.sched_setaffinity(0, home)


def host_info(tmp: Path) -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    fs = run_cmd(["df", "--output=fstype", str(tmp)]).split()[-1]
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_mib": int(mem) // 1024,
        "kernel": platform.release(),
        "os": first_line(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"]),
        "tmp_fs": fs,
    }


def skiff_commit(used: list[str]) -> str:
    """The commit the measured binary says it was built from (`skiff version`)."""
    for name in ("skiff", "skiff-pg"):
        if name in used:
            found = re.search(r"commit (\w+)", SERVERS[name].version)
            if found:
                return found.group(1)[:12]
    return "not measured"


def git_commit() -> str:
    sha = first_line(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = (
        subprocess.run(
            ["git", "-C", str(REPO), "diff", "--quiet", "HEAD", "--", ".", ":!bench"], capture_output=True
        ).returncode
        != 0
    )
    return sha + ("-dirty" if dirty else "")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 run of 2 s per scenario, no warm-up")
    p.add_argument("--only", help=f"scenarios, comma-separated: {','.join(SCENARIOS)}")
    p.add_argument("--servers", help=f"servers, comma-separated: {','.join(SERVERS)}")
    p.add_argument("--runs", type=int, help="measured runs per scenario and server (default 3)")
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up before each run (default 5)")
    p.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    p.add_argument(
        "--skiff",
        type=Path,
        help="bench this skiff binary (e.g. the musl build) instead of building target/release/skiff",
    )
    p.add_argument("--note", action="append", default=[], help="a line for the report's header")
    p.add_argument(
        "--out",
        type=Path,
        help="where REPORT.md, results.json and report.png go "
        "(default bench/ for a full run, target/bench/report/ for --quick or filtered runs)",
    )
    a = p.parse_args(argv)
    for opt, known in (("only", SCENARIOS), ("servers", SERVERS)):
        value = getattr(a, opt)
        if value:
            names = [n.strip() for n in value.split(",") if n.strip()]
            unknown = [n for n in names if n not in known]
            if unknown:
                p.error(f"--{opt}: unknown {', '.join(unknown)} (known: {', '.join(known)})")
            setattr(a, opt, names)
    return a


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    full = not (
        args.quick
        or args.only
        or args.servers
        or args.runs
        or args.duration
        or args.warmup is not None
        or args.connections != 64
        or args.skiff
    )
    out_dir = args.out or (BENCH if full else BUILD / "report")
    scenarios = [SCENARIOS[n] for n in (args.only or SCENARIOS)]
    wanted = set(args.servers or SERVERS)
    plan = [(s, [SERVERS[n] for n in s.servers if n in wanted]) for s in scenarios]
    plan = [(s, servers) for s, servers in plan if servers]
    if not plan:
        raise BenchError("nothing to run: no selected server takes part in a selected scenario")
    used = sorted({srv.name for _, servers in plan for srv in servers}, key=list(SERVERS).index)

    if not {int(SERVER_CPU), int(WRK_CPU)} <= os.sched_getaffinity(0):
        raise BenchError(f"needs CPUs {SERVER_CPU} and {WRK_CPU}; this process may use {os.sched_getaffinity(0)}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    atexit.register(cleanup)
    # The harness (wait loops, HTTP seeding) stays off the server's CPU.
    os.sched_setaffinity(0, {int(WRK_CPU)})

    needs = {"wrk": "wrk"}
    for name in used:
        needs |= SERVERS[name].needs
    ensure_apt(needs)
    BUILD.mkdir(parents=True, exist_ok=True)
    global _tmp_root
    # Under target/, not /tmp: a disk, so SQLite's fsync is a real one.
    _tmp_root = Path(tempfile.mkdtemp(prefix="run-", dir=BUILD))
    _tmp_root.chmod(0o711)  # PostgreSQL and nginx's worker run as other users
    for parent in (BUILD, BUILD.parent):
        parent.chmod(parent.stat().st_mode | 0o011)
    ctx = Context(
        args=args,
        tmp=_tmp_root,
        runs=args.runs or (1 if args.quick else 3),
        duration=args.duration or (2 if args.quick else 10),
        warmup=args.warmup if args.warmup is not None else (0 if args.quick else 5),
        startup_reps=2 if args.quick else 7,
        seed_users=SEED_USERS_QUICK if args.quick else SEED_USERS_FULL,
    )

    for name in used:
        SERVERS[name].build(ctx)
        log(f"{name}: {SERVERS[name].size_bytes / 1e6:.1f} MB ({SERVERS[name].size_what})")
    if "skiff-pg" in used:
        start_postgres(ctx)

    started = dt.datetime.now(dt.UTC)
    loadavg_before = Path("/proc/loadavg").read_text().split()[:3]
    overhead = launch_overhead_ms()
    log(f"spawning /bin/true and reaping it takes {overhead:.2f} ms (the floor of a start-up figure)")
    measure_startup(ctx, used)
    total = sum(len(servers) for _, servers in plan) * ctx.runs
    # A run with spinners measures twice (idle, then under spin) and ramps.
    seconds = sum(
        len(servers) * ctx.runs * (ctx.duration + ctx.warmup + 2)
        + (len(servers) * ctx.runs * (ctx.duration + 2 * SPIN_RAMP_S) if s.spinners else 0)
        for s, servers in plan
    )
    log(
        f"{total} measured runs of {ctx.duration} s (+{ctx.warmup} s warm-up each): "
        f"about {seconds / 60:.0f} min"
    )
    for scenario, servers in plan:
        for run_no in range(1, ctx.runs + 1):
            for server in servers:  # interleaved: run 1 of each, then run 2 of each...
                try:
                    measured_run(ctx, scenario, server, run_no)
                except (BenchError, OSError, subprocess.TimeoutExpired) as exc:
                    # One peer failing does not cost the whole bench: it is reported.
                    ctx.skipped[(scenario.name, server.name)] = f"failed: {str(exc).splitlines()[0]}"
                    log(f"{scenario.name} run {run_no} {server.name} FAILED: {exc}")
    finished = dt.datetime.now(dt.UTC)

    meta = {
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "skiff_commit": skiff_commit(used),
        "bench_commit": git_commit(),
        "command": shlex.join(["bench/run", *argv]),
        "full_run": full,
        "notes": args.note,
        "host": host_info(ctx.tmp),
        "loadavg_before": loadavg_before,
        "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        "method": {
            "runs": ctx.runs,
            "duration_s": ctx.duration,
            "warmup_s": ctx.warmup,
            "connections": args.connections,
            "wrk_threads": 1,
            "server_cpu": SERVER_CPU,
            "wrk_cpu": WRK_CPU,
            "startup_reps": ctx.startup_reps,
            "seed_users": ctx.seed_users,
            "spawn_true_ms": round(overhead, 3),
        },
        "tools": {
            "wrk": first_line(["wrk", "-v"]),
            "rustc": first_line(["rustc", "--version"]),
            "postgres": first_line(["postgres", "--version"]) if "skiff-pg" in used else None,
        },
    }
    servers = {
        n: {
            "label": SERVERS[n].label,
            "version": SERVERS[n].version,
            "size_bytes": SERVERS[n].size_bytes,
            "size_what": SERVERS[n].size_what,
            "about": SERVERS[n].about,
        }
        for n in used
    }
    plan_json = [{"scenario": s.name, "title": s.title, "servers": [x.name for x in srv]} for s, srv in plan]
    skipped = [{"scenario": s, "server": n, "reason": why} for (s, n), why in ctx.skipped.items()]
    notes = [{"scenario": s, "server": n, "note": text} for (s, n), text in ctx.notes.items()]
    data = {
        "meta": meta,
        "servers": servers,
        "plan": plan_json,
        "startup_ms": ctx.startup,
        "runs": ctx.results,
        "skipped": skipped,
        "notes": notes,
    }

    import report  # bench/report.py: tables, goals, chart

    report.write(data, out_dir, update_readme_too=(out_dir.resolve() == BENCH))
    log(f"wrote {out_dir}/REPORT.md, results.json and the chart")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    try:
        sys.exit(main(sys.argv[1:]))
    except BenchError as exc:
        log(f"bench failed: {exc}")
        sys.exit(1)
