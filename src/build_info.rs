//! Facts about this build, fixed at compile time.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_COMMIT: &str = env!("SKIFF_GIT_COMMIT");
pub const TARGET: &str = env!("SKIFF_TARGET");

/// The optional parts compiled into this binary.
pub const FEATURES: &[&str] = &[
    #[cfg(feature = "ip")]
    "ip",
    #[cfg(feature = "lua")]
    "lua",
    #[cfg(feature = "users")]
    "users",
    #[cfg(feature = "docs")]
    "docs",
];
