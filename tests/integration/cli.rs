//! The command line as a user meets it: each command's `--help` offers the
//! flags it uses and only those, every variable of the README has its flag,
//! a closed stdout ends a command quietly, and a missing scripts directory
//! is a one-line configuration error. `commands` runs each command to its
//! exit code; `db` runs the admin commands beside a server.

mod commands;
#[cfg(feature = "users")]
mod db;

use std::process::{Output, Stdio};

use crate::support::process::skiff_command as skiff;

fn help(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(dir.path()).args(args).arg("--help").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{args:?} --help");
    String::from_utf8(out.stdout).unwrap()
}

/// The long flags a help text offers.
fn flags_of(help: &str) -> Vec<String> {
    help.split_whitespace()
        .filter_map(|word| word.strip_prefix("--"))
        .map(|flag| {
            flag.trim_end_matches(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .to_string()
        })
        .filter(|flag| !flag.is_empty())
        .collect()
}

/// Every variable of the README's configuration table, as its flag:
/// `SKIFF_BODY_LIMIT` → `body-limit`, `PORT` → `port`, `SSL_CERT_FILE` →
/// `ssl-cert-file`. Aliases in parentheses (`or RUST_LOG`) are left out.
fn readme_flags() -> Vec<String> {
    let readme = include_str!("../../README.md");
    let table = readme
        .split("| variable | default | meaning |")
        .nth(1)
        .expect("the README has the configuration table");
    let mut flags = Vec::new();
    for row in table.lines().skip(2).take_while(|l| l.starts_with('|')) {
        let first = row.split('|').nth(1).unwrap();
        let first = match first.find('(') {
            Some(i) => &first[..i],
            None => first,
        };
        for var in first.split('`').skip(1).step_by(2) {
            let name = var.strip_prefix("SKIFF_").unwrap_or(var);
            flags.push(name.to_ascii_lowercase().replace('_', "-"));
        }
    }
    assert!(flags.len() >= 20, "read the table: {flags:?}");
    flags
}

#[test]
fn every_variable_of_the_readme_has_a_serve_flag() {
    let serve = flags_of(&help(&["serve"]));
    let bare = flags_of(&help(&[]));
    for flag in readme_flags() {
        assert!(serve.contains(&flag), "skiff serve --help lacks --{flag}");
        assert!(bare.contains(&flag), "skiff --help lacks --{flag}");
    }
    assert!(serve.contains(&"no-migrate".to_string()));
}

#[test]
fn each_command_offers_only_the_flags_it_uses() {
    let standard = ["help", "version"];
    let only = |args: &[&str], expected: &[&str]| {
        let mut offered: Vec<String> = flags_of(&help(args))
            .into_iter()
            .filter(|f| !standard.contains(&f.as_str()))
            .collect();
        offered.sort();
        offered.dedup();
        let mut expected: Vec<String> = expected.iter().map(|f| f.to_string()).collect();
        expected.sort();
        assert_eq!(offered, expected, "skiff {args:?} --help");
    };
    only(&["version"], &[]);
    only(&["openapi"], &[]);
    only(&["healthcheck"], &["url", "timeout", "port"]);
    #[cfg(feature = "users")]
    {
        let database = ["database-url", "log", "log-format"];
        only(&["migrate"], &database);
        only(&["db", "status"], &database);
        only(&["db", "schema"], &database);
        only(&["db", "create"], &database);
        only(&["db", "drop"], &database);
    }
}

#[cfg(feature = "users")]
#[test]
fn a_database_flag_works_before_and_after_the_db_command() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("flag.db").display());
    let out = skiff(dir.path())
        .env_remove("DATABASE_URL")
        .args(["db", "create", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(dir.path().join("flag.db").exists());
    // Before the command, as with `git -C DIR status`.
    let out = skiff(dir.path())
        .env_remove("DATABASE_URL")
        .args(["db", "--database-url", &url, "status"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("flag.db"), "the flag's database: {stdout}");
    // A setting migrate does not use cannot stop it.
    let out = skiff(dir.path())
        .env("SKIFF_LUA_MEMORY", "lots")
        .env("SKIFF_SCRIPTS_DIR", "/nonexistent")
        .args(["migrate", "--database-url", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
}

fn one_line_exit_2(out: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(stderr.contains(names), "names {names}: {stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout: {out:?}");
}

#[test]
fn a_missing_scripts_directory_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = skiff(dir.path())
        .env("SKIFF_SCRIPTS_DIR", "/nonexistent")
        .arg("serve")
        .output()
        .unwrap();
    one_line_exit_2(&out, "SKIFF_SCRIPTS_DIR");
    let out = skiff(dir.path())
        .args(["serve", "--scripts-dir", "/nonexistent"])
        .output()
        .unwrap();
    one_line_exit_2(&out, "--scripts-dir");
}

#[test]
fn the_flags_that_were_missing_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // Half the credentials: refused, naming the flag that was given.
    let out = skiff(dir.path())
        .args(["serve", "--api-user", "admin"])
        .output()
        .unwrap();
    one_line_exit_2(&out, "--api-user");
    let out = skiff(dir.path())
        .args(["serve", "--api-password", "hunter2"])
        .output()
        .unwrap();
    one_line_exit_2(&out, "--api-password");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"));
    let out = skiff(dir.path())
        .args([
            "serve",
            "--api-user",
            "admin",
            "--api-password-file",
            "/nonexistent/pw",
        ])
        .output()
        .unwrap();
    one_line_exit_2(&out, "--api-password-file");
    let out = skiff(dir.path())
        .args(["serve", "--ssl-cert-file", "/nonexistent/roots.pem"])
        .output()
        .unwrap();
    one_line_exit_2(&out, "--ssl-cert-file");
    let out = skiff(dir.path())
        .env("SSL_CERT_FILE", "/nonexistent/roots.pem")
        .arg("serve")
        .output()
        .unwrap();
    one_line_exit_2(&out, "SSL_CERT_FILE");
}

/// `skiff serve` with `args` on a free port; its address, once it listens.
#[cfg(feature = "users")]
fn start(dir: &std::path::Path, args: &[&str]) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = skiff(dir)
        .env("PORT", "0")
        .env("SKIFF_LOG_FORMAT", "json")
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("skiff listening") {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let _ = tx.send(v["addr"].as_str().unwrap().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("skiff logs the address it listens on");
    (child, addr)
}

#[cfg(feature = "users")]
#[tokio::test]
async fn credentials_given_as_flags_guard_the_users() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let (mut child, addr) = start(
        dir.path(),
        &[
            "--api-user",
            "admin",
            "--api-password-file",
            pw.to_str().unwrap(),
        ],
    );
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/users");
    let anonymous = client.get(&url).send().await.unwrap();
    let allowed = client
        .get(&url)
        .basic_auth("admin", Some("s3cret"))
        .send()
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(allowed.status(), 200);
}

#[test]
fn a_closed_stdout_ends_every_printing_command_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &["openapi"],
        &["version"],
        &["--help"],
        #[cfg(feature = "users")]
        &["migrate"],
        #[cfg(feature = "users")]
        &["db", "status"],
        #[cfg(feature = "users")]
        &["db", "schema"],
    ];
    for args in commands {
        // A pipe whose reader is gone: the first write fails with EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = skiff(dir.path())
            .args(*args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
}
