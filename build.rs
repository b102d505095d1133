//! Records the git commit and the target triple for `skiff version` and the
//! `skiff_build_info` metric. No clock is read, so builds stay reproducible.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=SKIFF_GIT_COMMIT");
    // `sqlx::migrate!` embeds migrations/; a new file there must rebuild.
    println!("cargo:rerun-if-changed=migrations");
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("SKIFF_GIT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "--short=12", "HEAD"])
                .output()
                .ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=SKIFF_GIT_COMMIT={commit}");
    println!(
        "cargo:rustc-env=SKIFF_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}
