#!/usr/bin/env python3
"""Rolling restart with zero failed requests (run by scripts/test-rolling-restart).

Two skiff replicas on one PostgreSQL database behind nginx on loopback. A
load of GET /hello, POST /users and GET /users/{id} runs through nginx while
each replica in turn gets SIGTERM, exits, and is started again on its port;
the next one is restarted only once the previous one is ready again. Passes
when every request of the load got a 2xx, every replica exited 0, and every
acknowledged user reads back afterwards as it was answered.

Standard library only. Every process it starts is stopped on the way out.
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time


def log(message):
    print(f"rolling-restart: {message}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=2.0):
    """(status, body) of GET http://127.0.0.1:port/path, or (None, error)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    except OSError as e:
        return None, str(e)
    finally:
        conn.close()


def wait_until(what, condition, timeout=30.0, alive=None):
    deadline = time.monotonic() + timeout
    while not condition():
        if alive is not None and not alive():
            raise SystemExit(f"rolling-restart: FAIL: {what}: the process exited")
        if time.monotonic() > deadline:
            raise SystemExit(f"rolling-restart: FAIL: timed out waiting for {what}")
        time.sleep(0.02)


class Replica:
    def __init__(self, name, binary, database_url, workdir):
        self.name, self.binary, self.database_url = name, binary, database_url
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.port = None
        self.process = None
        self.starts = 0

    def start(self):
        env = {
            "PATH": os.environ.get("PATH", ""),
            "DATABASE_URL": self.database_url,
            "SKIFF_BIND": "127.0.0.1",
            "SKIFF_LOG": "info",
            "SKIFF_LOG_FORMAT": "json",
            "SKIFF_SHUTDOWN_GRACE": "10s",
        }
        # The first start picks a free port; restarts reuse it (nginx knows it).
        for _ in range(5):
            port = self.port or free_port()
            with open(self.log_path, "a") as out:
                self.process = subprocess.Popen(
                    [self.binary, "serve"],
                    env=dict(env, PORT=str(port)),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                wait_until(
                    f"{self.name} to be ready on {port}",
                    lambda: get(port, "/readyz")[0] == 200,
                    alive=lambda: self.process.poll() is None,
                )
            except SystemExit:
                if self.port is not None:
                    raise
                self.process.kill()
                self.process.wait()
                continue
            self.port = port
            self.starts += 1
            return
        raise SystemExit(f"rolling-restart: FAIL: {self.name} did not start")

    def stop(self):
        """SIGTERM, then the exit code (which must be 0)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise SystemExit(f"rolling-restart: FAIL: {self.name} did not exit after SIGTERM")
        if code != 0:
            raise SystemExit(f"rolling-restart: FAIL: {self.name} exited {code} after SIGTERM")

    def kill(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


NGINX_CONF = """\
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream skiff {{
        server 127.0.0.1:{port_a} max_fails=1 fail_timeout=1s;
        server 127.0.0.1:{port_b} max_fails=1 fail_timeout=1s;
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://skiff;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A replica that is stopping refuses connections, closes idle
            # keep-alive ones, or answers 503 (not ready): none of these ran
            # the request, so it is safe to send it, POST included, to the
            # other one.
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Load:
    """Clients looping GET /hello, POST /users, GET /users/{id} through nginx."""

    def __init__(self, port, clients):
        self.port, self.clients = port, clients
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests = 0
        self.retried = 0  # answered by the second replica nginx tried
        self.failures = []
        self.acknowledged = {}  # id -> user as answered
        self.threads = [threading.Thread(target=self.run, args=(c,)) for c in range(clients)]

    def start(self):
        for t in self.threads:
            t.start()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join()

    def count(self):
        with self.lock:
            return self.requests

    def record(self, what, status, upstream, error=None):
        with self.lock:
            self.requests += 1
            if upstream and "," in upstream:
                self.retried += 1
            if error is not None or not (200 <= status < 300):
                self.failures.append(f"{what}: {status} {error or ''} via {upstream}")

    def request(self, conn, method, path, body=None):
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        r = conn.getresponse()
        return r.status, r.read(), r.getheader("x-upstream", "")

    def run(self, client):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = 0
        while not self.stop.is_set():
            i += 1
            email = f"c{client}-{i}@rolling.example"
            steps = [("GET", "/hello", None), ("POST", "/users", json.dumps({"email": email}))]
            for method, path, body in steps:
                what = f"{method} {path}"
                try:
                    status, data, upstream = self.request(conn, method, path, body)
                except (OSError, http.client.HTTPException) as e:
                    self.record(what, None, "", error=repr(e))
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                    continue
                self.record(what, status, upstream)
                if method == "POST" and status == 201:
                    user = json.loads(data)
                    with self.lock:
                        self.acknowledged[user["id"]] = user
                    # Read it back at once: on either replica, it is there.
                    try:
                        status, data, upstream = self.request(conn, "GET", f"/users/{user['id']}")
                        self.record("GET /users/{id}", status, upstream)
                    except (OSError, http.client.HTTPException) as e:
                        self.record("GET /users/{id}", None, "", error=repr(e))
                        conn.close()
                        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()


def verify(port, acknowledged):
    """Ids of acknowledged users that do not read back as answered."""

    def check(user):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/users/{user['id']}")
            r = conn.getresponse()
            body = r.read()
            return None if r.status == 200 and json.loads(body) == user else f"{user['id']}: {r.status}"
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return [m for m in pool.map(check, acknowledged.values()) if m]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--binary", required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load (default 10)")
    parser.add_argument("--cycles", type=int, default=2, help="restarts of each replica (default 2)")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="skiff-rolling.")
    replicas = [Replica(n, args.binary, args.database_url, workdir) for n in ("a", "b")]
    nginx = None
    load = None
    try:
        for r in replicas:
            r.start()
        port = free_port()
        conf = os.path.join(workdir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(workdir=workdir, port=port,
                                      port_a=replicas[0].port, port_b=replicas[1].port))
        nginx = subprocess.Popen(["nginx", "-p", workdir, "-c", conf, "-e",
                                  os.path.join(workdir, "nginx-error.log")])
        wait_until("nginx", lambda: get(port, "/hello")[0] == 200, alive=lambda: nginx.poll() is None)
        log(f"replicas on {replicas[0].port} and {replicas[1].port}, nginx on {port}, "
            f"{args.clients} clients for {args.duration:.0f} s")

        load = Load(port, args.clients)
        started = time.monotonic()
        load.start()
        # The restarts are spread over the run, with load before, between
        # and after them; each also waits for the load to have moved on.
        restarts = [r for _ in range(args.cycles) for r in replicas]
        for k, replica in enumerate(restarts):
            at = started + args.duration * (k + 1) / (len(restarts) + 1)
            seen = load.count()
            wait_until("the load to move on", lambda: load.count() >= seen + 50
                       and time.monotonic() >= at, timeout=args.duration + 60)
            t = time.monotonic()
            replica.stop()
            replica.start()
            log(f"restarted {replica.name} at {t - started:.1f} s: SIGTERM, exit 0, "
                f"ready again in {time.monotonic() - t:.2f} s; {load.count()} requests so far")
        end = started + args.duration
        wait_until("the end of the load", lambda: time.monotonic() >= end, timeout=args.duration + 60)
        load.finish()
        elapsed = time.monotonic() - started

        missing = verify(port, load.acknowledged)
        log(f"{load.requests} requests in {elapsed:.1f} s, {len(load.failures)} not 2xx, "
            f"{load.retried} retried by nginx on the other replica; "
            f"{len(restarts)} restarts; {len(load.acknowledged)} users acknowledged, "
            f"{len(missing)} missing afterwards")
        for failure in load.failures[:20]:
            log(f"  failed: {failure}")
        for m in missing[:20]:
            log(f"  missing: {m}")
        if load.failures or missing:
            log("FAIL")
            return 1
        log("ok: zero failed requests, nothing acknowledged lost")
        return 0
    finally:
        if load is not None:
            load.stop.set()
        if nginx is not None and nginx.poll() is None:
            nginx.terminate()
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
                nginx.wait()
        for r in replicas:
            r.kill()
        if os.environ.get("KEEP_WORKDIR"):
            log(f"logs kept in {workdir}")
        else:
            subprocess.run(["rm", "-rf", workdir], check=False)


if __name__ == "__main__":
    sys.exit(main())
