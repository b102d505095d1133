//! A PostgreSQL server of one test's own, which the test may stop and start
//! again (on the same port) to play the database going away. The shared
//! server of `scripts/with-postgres` must not be stopped: other tests use it.
//!
//! Like `scripts/with-postgres`, it runs the server as the unprivileged
//! `skiff-postgres` user when the tests run as root (PostgreSQL refuses to
//! run as root). Without PostgreSQL installed, [`PgCluster::start`] says
//! loudly that the test is skipped and returns `None`, unless
//! `SKIFF_TEST_REQUIRE_POSTGRES=1`, when it fails.
//!
//! Included with `#[path]` by the tests that need it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const REQUIRE_POSTGRES: &str = "SKIFF_TEST_REQUIRE_POSTGRES";
const PG_USER: &str = "skiff-postgres";

/// How a server is stopped (`pg_ctl stop -m MODE`).
#[derive(Debug, Clone, Copy)]
pub enum StopMode {
    /// Ends the sessions (clients get `57P01 admin_shutdown`), then stops.
    Fast,
    /// Like a crash: every process is killed; recovery runs at next start.
    Immediate,
}

pub struct PgCluster {
    bindir: PathBuf,
    /// Holds the data directory and the socket; removed on drop.
    dir: tempfile::TempDir,
    pub port: u16,
    password: String,
    running: bool,
}

impl PgCluster {
    /// Makes a cluster in a temp dir and starts it on a free loopback port.
    pub fn start(test: &str) -> Option<PgCluster> {
        let Some(bindir) = bindir() else {
            assert!(
                std::env::var(REQUIRE_POSTGRES).as_deref() != Ok("1"),
                "{test}: {REQUIRE_POSTGRES}=1 but PostgreSQL (initdb, pg_ctl) is not installed"
            );
            eprintln!(
                "\n*** SKIPPED {test}: PostgreSQL is not installed \
                 (apt-get install postgresql, or run scripts/test) ***\n"
            );
            return None;
        };
        let root = is_root();
        if root {
            ensure_pg_user();
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        if root {
            chown(dir.path());
        }
        let password = format!("pw{}", uuid::Uuid::now_v7().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{password}\n")).expect("can write the password file");
        if root {
            chown(&pwfile);
        }
        let mut cluster = PgCluster {
            bindir,
            dir,
            port: 0,
            password,
            running: false,
        };
        let data = cluster.data();
        cluster.run_ok(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                &format!("--pwfile={}", pwfile.display()),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ],
        );
        let _ = std::fs::remove_file(&pwfile);
        // A port nothing listens on now; if something takes it before the
        // server binds, the start fails and another is tried.
        for _ in 0..5 {
            cluster.port = free_port();
            if cluster.try_start() {
                return Some(cluster);
            }
        }
        panic!(
            "PostgreSQL did not start:\n{}",
            std::fs::read_to_string(cluster.log()).unwrap_or_default()
        );
    }

    /// `postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`.
    pub fn url(&self) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/postgres",
            self.password, self.port
        )
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// Stops the server; clients see their connections end.
    pub fn stop(&mut self, mode: StopMode) {
        let mode = match mode {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        };
        let data = self.data();
        self.run_ok(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "-m", mode, "-w", "stop"],
        );
        self.running = false;
    }

    /// Starts the stopped server again, on the same port.
    pub fn restart(&mut self) {
        assert!(
            self.try_start(),
            "PostgreSQL did not start again on port {}:\n{}",
            self.port,
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    fn try_start(&mut self) -> bool {
        let data = self.data();
        let socket_dir = self.dir.path().to_str().unwrap().to_owned();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {socket_dir} -c max_connections=100 \
             -c fsync=off -c full_page_writes=off",
            self.port
        );
        let started = self
            .run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-l",
                    self.log().to_str().unwrap(),
                    "-w",
                    "-t",
                    "60",
                    "-o",
                    &options,
                    "start",
                ],
            )
            .status
            .success();
        self.running = started;
        started
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// Runs a PostgreSQL program as the server's user.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let program = self.bindir.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={PG_USER}"),
                &format!("--regid={PG_USER}"),
                "--init-groups",
                "--",
            ])
            .arg(&program);
            c
        } else {
            Command::new(&program)
        };
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()))
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            let data = self.data();
            let _ = self.run(
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}

/// The newest `/usr/lib/postgresql/*/bin` with initdb and pg_ctl, or the
/// directory of the ones on `PATH`.
fn bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
        .collect();
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = dirs.pop() {
        return Some(dir);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
}

fn is_root() -> bool {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    })
}

fn ensure_pg_user() {
    let known = Command::new("id")
        .arg(PG_USER)
        .output()
        .is_ok_and(|o| o.status.success());
    if !known {
        let out = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                PG_USER,
            ])
            .output()
            .expect("useradd runs");
        // Another test may have created it at the same moment.
        assert!(
            out.status.success()
                || Command::new("id")
                    .arg(PG_USER)
                    .output()
                    .is_ok_and(|o| o.status.success()),
            "cannot create the {PG_USER} user: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn chown(path: &Path) {
    let out = Command::new("chown")
        .arg(format!("{PG_USER}:"))
        .arg(path)
        .output()
        .expect("chown runs");
    assert!(out.status.success(), "chown {}", path.display());
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("can bind a loopback port")
        .port()
}
