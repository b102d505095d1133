//! The application: its shared state ([`crate::state`]) built once at
//! start-up, and the server loop with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::{AppState, Shared};

/// Why the service could not start (exit code 1; bad configuration is
/// reported earlier, with exit code 2).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[cfg(feature = "lua")]
    #[error(transparent)]
    Lua(#[from] crate::lua::LoadError),
    #[cfg(feature = "users")]
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
    #[error("{0}")]
    Other(String),
}

/// Options of `serve` that are not configuration of the service itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Skip applying pending migrations at start-up.
    pub no_migrate: bool,
}

/// A built application, bound to its port, ready to run.
pub struct App {
    state: AppState,
    listener: TcpListener,
}

impl App {
    /// Builds the state (database, scripts, upstream client) and binds the
    /// listener. Port 0 picks a free port: see [`App::local_addr`].
    pub async fn build(config: Config, options: ServeOptions) -> Result<App, StartupError> {
        let metrics = crate::telemetry::metrics();
        #[cfg(feature = "ip")]
        let ip = crate::public_ip::IpService::new(&config).map_err(StartupError::Other)?;
        #[cfg(feature = "lua")]
        let lua = crate::lua::LuaEngine::start(&config)?;
        #[cfg(feature = "users")]
        let db = crate::db::Db::connect(&config.database_url, !options.no_migrate).await?;
        #[cfg(not(feature = "users"))]
        let _ = options;

        let addr = SocketAddr::new(config.bind, config.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let state = AppState::new(Shared {
            config,
            metrics,
            #[cfg(feature = "ip")]
            ip,
            #[cfg(feature = "lua")]
            lua,
            #[cfg(feature = "users")]
            db,
        });
        Ok(App { state, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves; then marks readiness down at once,
    /// goes on accepting and serving new connections for the shutdown delay
    /// (while load balancers notice), stops accepting, and gives in-flight
    /// requests the grace period to finish.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let App { state, listener } = self;
        let router = crate::http::router(state.clone());
        let grace = state.config.shutdown_grace;
        // SIGHUP (and, opted in, a change of the directory) reloads the
        // scripts while the server runs; in place before "listening".
        #[cfg(feature = "lua")]
        let _reloaders = state.lua.spawn_reloaders(state.config.scripts_watch);
        let delay = state.config.shutdown_delay;
        tracing::info!(
            addr = %listener.local_addr()?,
            version = crate::build_info::VERSION,
            "skiff listening"
        );

        let (began_tx, began_rx) = tokio::sync::oneshot::channel::<()>();
        let draining = state.clone();
        let signal = async move {
            shutdown.await;
            draining.begin_draining();
            if !delay.is_zero() {
                tracing::info!(
                    delay = ?delay,
                    "shutdown begun: readiness down, still serving new connections for the delay"
                );
                tokio::time::sleep(delay).await;
            }
            tracing::info!(grace = ?grace, "no longer accepting connections: finishing in-flight requests");
            let _ = began_tx.send(());
        };
        let limits = crate::server::Limits {
            header_read_timeout: state.config.header_timeout,
            idle_timeout: state.config.idle_timeout,
            max_connections: state.config.max_connections,
            send_timeout: state.config.send_timeout,
        };
        let server = crate::server::serve(listener, router, limits, signal);
        let deadline = async move {
            if began_rx.await.is_ok() {
                tokio::time::sleep(grace).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = server => {}
            () = deadline => tracing::warn!("grace period over: dropping the connections still open"),
        }
        #[cfg(feature = "users")]
        state.db.close().await;
        tracing::info!("skiff stopped");
        Ok(())
    }
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled (after "skiff listening" is
/// logged), so a signal sent as soon as the server says it listens is caught
/// rather than killing the process.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("can listen for SIGTERM");
    let mut int = signal(SignalKind::interrupt()).expect("can listen for SIGINT");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
