//! The real `skiff` binary as a child process: a command with a clean
//! environment, and a running `skiff serve` whose log is kept.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::eventually;

/// The built binary.
pub const SKIFF: &str = env!("CARGO_BIN_EXE_skiff");

/// `skiff` with a clean environment of its own: loopback, and a SQLite file
/// in `dir` (also its working directory).
pub fn skiff_command(dir: &Path) -> Command {
    command(
        &[],
        &format!("sqlite://{}", dir.join("skiff.db").display()),
        dir,
    )
}

/// `skiff` on `database_url`, logging warnings and its start-up lines only.
#[cfg(feature = "users")]
pub fn skiff(database_url: &str, dir: &Path) -> Command {
    skiff_via(&[], database_url, dir)
}

/// [`skiff`] run by `wrapper` (e.g. `["setpriv", "--reuid=65534", …, "--"]`),
/// which must exec it (so killing the child kills skiff).
#[cfg(feature = "users")]
pub fn skiff_via(wrapper: &[&str], database_url: &str, dir: &Path) -> Command {
    let mut cmd = command(wrapper, database_url, dir);
    cmd.env("SKIFF_LOG", "warn,skiff::app=info");
    cmd
}

fn command(wrapper: &[&str], database_url: &str, dir: &Path) -> Command {
    let mut cmd = match wrapper {
        [] => Command::new(SKIFF),
        [program, args @ ..] => {
            let mut cmd = Command::new(program);
            cmd.args(args).arg(SKIFF);
            cmd
        }
    };
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SKIFF_BIND", "127.0.0.1")
        .env("DATABASE_URL", database_url)
        .current_dir(dir);
    cmd
}

/// A `skiff serve` process, the address it announced, and every line it
/// wrote on stdout (its log).
pub struct Server {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `cmd serve` on a free port and waits for its "listening" line.
    /// The log is JSON unless `cmd` sets `SKIFF_LOG_FORMAT` itself.
    pub fn start(cmd: Command) -> Server {
        Server::start_with(cmd, &[])
    }

    /// Starts `cmd serve ARGS…`.
    pub fn start_with(mut cmd: Command, args: &[&str]) -> Server {
        if !cmd.get_envs().any(|(name, _)| name == "SKIFF_LOG_FORMAT") {
            cmd.env("SKIFF_LOG_FORMAT", "json");
        }
        let mut child = cmd
            .env("PORT", "0")
            .arg("serve")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("skiff starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("skiff listening") {
                    let _ = tx.send(listening_address(&line));
                }
                kept.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("skiff logs the address it listens on");
        Server { child, addr, log }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The first log line containing `needle`, waiting for it.
    pub async fn line_with(&self, needle: &str) -> String {
        let mut found = None;
        eventually(&format!("a log line with {needle:?}"), || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned();
            let done = found.is_some();
            async move { done }
        })
        .await;
        found.unwrap()
    }

    /// Sends signal `name` (`TERM`, `INT`, `HUP`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit.
    pub fn wait(mut self) -> ExitStatus {
        self.child.wait().expect("skiff exits")
    }

    /// Sends SIGTERM, waits for the exit (which must be clean), and returns
    /// the whole log.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().expect("skiff exits");
        assert!(status.success(), "skiff exits 0 on SIGTERM: {status}");
        // The reader thread sees the pipe close once the process is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.log) > 1 {
            assert!(
                std::time::Instant::now() < deadline,
                "the log is read to its end"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` of a "skiff listening" line, in either log format.
fn listening_address(line: &str) -> String {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => v["addr"].as_str().expect("addr").to_owned(),
        Err(_) => line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .expect("addr=")
            .to_owned(),
    }
}
