//! The `skiff` binary: everything lives in the library crate.

// musl's allocator is slow under contention; mimalloc is not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let code = skiff::cli::run();
    // Log lines are written in batches: the last ones go out now.
    skiff::telemetry::flush_logs();
    code
}
