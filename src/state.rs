//! The state every handler shares, built once at start-up by
//! [`crate::app::App::build`] and passed to handlers by `State`.

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;

use crate::config::Config;

/// Everything handlers share.
pub struct Shared {
    pub config: Config,
    pub metrics: PrometheusHandle,
    #[cfg(feature = "ip")]
    pub ip: crate::public_ip::IpService,
    #[cfg(feature = "lua")]
    pub lua: crate::lua::LuaEngine,
    #[cfg(feature = "users")]
    pub db: crate::db::Db,
}

/// Cheap to clone: one reference count per request.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    shared: Shared,
    draining: AtomicBool,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0.shared
    }
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(Inner {
            shared,
            draining: AtomicBool::new(false),
        }))
    }

    /// Whether shutdown has begun (readiness answers 503 from then on).
    pub fn is_draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    /// Marks shutdown begun: done once, by the server loop.
    pub(crate) fn begin_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }
}
