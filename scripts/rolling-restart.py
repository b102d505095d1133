#!/usr/bin/env python3
"""Rolling restart with zero failed requests (run by scripts/test-rolling-restart).

Two skiff replicas on one PostgreSQL database behind nginx on loopback. A
load of GET /hello, POST /users and GET /users/{id} runs through nginx while
each replica in turn gets SIGTERM, exits, and is started again on its port;
the next one is restarted only once the previous one is ready again. Passes
when every request of the load got a 2xx, every replica exited 0, and every
acknowledged user reads back afterwards as it was answered.

nginx does not retry (`proxy_next_upstream off`): a request sent to a
replica that refuses it fails. The replicas run with SKIFF_SHUTDOWN_DELAY,
and the script plays the part of Kubernetes: on SIGTERM the replica's
/readyz turns 503, the script takes it out of nginx's upstream (a reload,
as an endpoint update would), and the replica goes on serving whatever
still reaches it until the delay is over; once started again and ready, it
is put back.

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
    def __init__(self, name, binary, database_url, workdir, shutdown_delay):
        self.name, self.binary, self.database_url = name, binary, database_url
        self.shutdown_delay = shutdown_delay
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
            "SKIFF_SHUTDOWN_DELAY": self.shutdown_delay,
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

    def terminate(self):
        """SIGTERM; returns once /readyz says the replica is going away."""
        self.process.send_signal(signal.SIGTERM)
        wait_until(f"{self.name}'s /readyz to answer 503",
                   lambda: get(self.port, "/readyz")[0] == 503,
                   alive=lambda: self.process.poll() is None)

    def wait_exit(self):
        """The exit code after SIGTERM, which must be 0."""
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
# A master process, for reloads (the upstream changes as replicas come and go).
master_process on;
worker_processes 2;
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
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://skiff;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # No retries: a request nginx sends to a replica must be
            # answered by it. A stopping replica is taken out of the
            # upstream (a reload) during its SKIFF_SHUTDOWN_DELAY, while it
            # still serves.
            proxy_next_upstream off;
            proxy_connect_timeout 1s;
            proxy_read_timeout 30s;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


class Nginx:
    """nginx in the foreground, its upstream the replicas in rotation."""

    def __init__(self, workdir, port):
        self.workdir, self.port = workdir, port
        self.conf = os.path.join(workdir, "nginx.conf")
        self.process = None

    def write(self, replicas):
        servers = "\n".join(f"        server 127.0.0.1:{r.port};" for r in replicas)
        with open(self.conf, "w") as f:
            f.write(NGINX_CONF.format(workdir=self.workdir, port=self.port, servers=servers))

    def start(self, replicas):
        self.write(replicas)
        self.process = subprocess.Popen(["nginx", "-p", self.workdir, "-c", self.conf, "-e",
                                         os.path.join(self.workdir, "nginx-error.log")])
        wait_until("nginx", lambda: get(self.port, "/hello")[0] == 200,
                   alive=lambda: self.process.poll() is None)

    def upstream_of(self):
        """The replica port that answered a GET /hello on a new connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/hello", headers={"Connection": "close"})
            r = conn.getresponse()
            r.read()
            return r.getheader("x-upstream", "")
        except OSError:
            return ""
        finally:
            conn.close()

    def route_to(self, replicas, added=None, removed=None):
        """Reloads with `replicas` as the upstream, and returns once the new
        workers answer: a request served by `added`, or twenty in a row not
        served by `removed`."""
        self.write(replicas)
        self.process.send_signal(signal.SIGHUP)
        alive = lambda: self.process.poll() is None
        if added is not None:
            wait_until(f"nginx to route to {added.name}",
                       lambda: self.upstream_of().endswith(f":{added.port}"), alive=alive)
        if removed is not None:
            streak = [0]

            def clear():
                upstream = self.upstream_of()
                streak[0] = 0 if (not upstream or upstream.endswith(f":{removed.port}")) else streak[0] + 1
                return streak[0] >= 20
            wait_until(f"nginx to stop routing to {removed.name}", clear, alive=alive)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
        # A new connection to nginx per request. A reload makes nginx's old
        # workers close their idle keep-alive client connections, and a
        # client that sent its next request at that instant sees it fail:
        # nginx's race, not skiff's (nginx to skiff keeps its keep-alive).
        headers = {"Connection": "close"}
        if body is not None:
            headers["content-type"] = "application/json"
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
    parser.add_argument("--shutdown-delay", default="5s",
                        help="SKIFF_SHUTDOWN_DELAY of the replicas (default 5s, as deploy/)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="skiff-rolling.")
    # nginx's workers (nobody, when run as root) reach their temp paths here.
    os.chmod(workdir, 0o755)
    replicas = [Replica(n, args.binary, args.database_url, workdir, args.shutdown_delay)
                for n in ("a", "b")]
    nginx = None
    load = None
    try:
        for r in replicas:
            r.start()
        port = free_port()
        nginx = Nginx(workdir, port)
        nginx.start(replicas)
        log(f"replicas on {replicas[0].port} and {replicas[1].port}, nginx on {port} "
            f"(no retries), {args.clients} clients for {args.duration:.0f} s, "
            f"shutdown delay {args.shutdown_delay}")

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
            others = [r for r in replicas if r is not replica]
            replica.terminate()
            nginx.route_to(others, removed=replica)
            out = time.monotonic() - t
            replica.wait_exit()
            replica.start()
            nginx.route_to(replicas, added=replica)
            log(f"restarted {replica.name} at {t - started:.1f} s: SIGTERM, out of nginx in "
                f"{out:.2f} s, exit 0, back in {time.monotonic() - t:.2f} s; "
                f"{load.count()} requests so far")
        end = started + args.duration
        wait_until("the end of the load", lambda: time.monotonic() >= end, timeout=args.duration + 60)
        load.finish()
        elapsed = time.monotonic() - started

        missing = verify(port, load.acknowledged)
        log(f"{load.requests} requests in {elapsed:.1f} s, {len(load.failures)} not 2xx, "
            f"{load.retried} retried by nginx on the other replica (retries are off); "
            f"{len(restarts)} restarts; {len(load.acknowledged)} users acknowledged, "
            f"{len(missing)} missing afterwards")
        for failure in load.failures[:20]:
            log(f"  failed: {failure}")
        for m in missing[:20]:
            log(f"  missing: {m}")
        if load.failures or missing or load.retried:
            log("FAIL")
            return 1
        log("ok: zero failed requests, nothing acknowledged lost")
        return 0
    finally:
        if load is not None:
            load.stop.set()
        if nginx is not None:
            nginx.stop()
        for r in replicas:
            r.kill()
        if os.environ.get("KEEP_WORKDIR"):
            log(f"logs kept in {workdir}")
        else:
            subprocess.run(["rm", "-rf", workdir], check=False)


if __name__ == "__main__":
    sys.exit(main())
