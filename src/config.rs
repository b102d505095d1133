//! Configuration: command-line flags win over environment variables, which
//! win over the defaults of `../shared/API.md`.
//!
//! Every value is parsed here, at the edge, into a typed [`Config`]; a bad
//! value becomes a [`ConfigError`] naming the variable (or flag) and what it
//! expected, which `main` prints on one line before exiting with code 2.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// A value given on the command line or in the environment that does not
/// parse. `name` is the flag (`--port`) or the variable (`PORT`).
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A password that never shows up in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// HTTP Basic credentials that guard `/users` when configured.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: Secret,
}

/// Everything the service reads at start-up, typed and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub port: u16,
    pub bind: IpAddr,
    pub database_url: String,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub request_timeout: Duration,
    pub body_limit: usize,
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long new connections are still accepted and
    /// served (with readiness down) before accepting stops.
    pub shutdown_delay: Duration,
    pub time_zone: jiff::tz::TimeZone,
    /// The IANA name of `time_zone`, as configured.
    pub time_zone_name: String,
    pub ip_upstream: String,
    pub ip_timeout: Duration,
    pub ip_cache_ttl: Duration,
    /// A PEM file of extra roots for the upstream (`SSL_CERT_FILE`).
    pub ssl_cert_file: Option<PathBuf>,
    pub scripts_dir: PathBuf,
    /// Whether `scripts_dir` was set explicitly (then it must exist).
    pub scripts_dir_explicit: bool,
    /// Reload the scripts when the directory changes.
    pub scripts_watch: bool,
    pub lua_memory: usize,
    pub lua_timeout: Duration,
    /// Origins answered with CORS headers (`SKIFF_CORS_ORIGINS`); `None`: no
    /// CORS headers at all.
    pub cors_origins: Option<CorsOrigins>,
    pub credentials: Option<Credentials>,
    /// Requests served at once before new ones are shed with `503`
    /// (0: no limit). Health and metrics routes are never shed.
    pub max_concurrency: usize,
    /// TCP connections open at once; more are closed as soon as accepted.
    pub max_connections: u32,
    /// A client must send its request head within this time.
    pub header_timeout: Duration,
    /// A kept-alive connection may wait this long for its next request.
    pub idle_timeout: Duration,
    /// Longest wait for the next piece of a request body (`408` past it).
    pub body_timeout: Duration,
    /// Longest time a client may accept no bytes of an answer (the
    /// connection is closed past it).
    pub send_timeout: Duration,
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://skiff.db";
pub const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 8080,
            bind: IpAddr::from([0, 0, 0, 0]),
            database_url: DEFAULT_DATABASE_URL.into(),
            log_filter: "info".into(),
            log_format: LogFormat::Text,
            request_timeout: Duration::from_secs(10),
            body_limit: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            time_zone: jiff::tz::TimeZone::get(DEFAULT_TIME_ZONE)
                .expect("the bundled tz database has Asia/Tokyo"),
            time_zone_name: DEFAULT_TIME_ZONE.into(),
            ip_upstream: "https://api.ipify.org".into(),
            ip_timeout: Duration::from_secs(3),
            ip_cache_ttl: Duration::from_secs(60),
            ssl_cert_file: None,
            scripts_dir: PathBuf::from("lua"),
            scripts_dir_explicit: false,
            scripts_watch: false,
            lua_memory: 16 * 1024 * 1024,
            lua_timeout: Duration::from_millis(100),
            cors_origins: None,
            credentials: None,
            max_concurrency: 1024,
            max_connections: 4096,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(5),
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// The configuration flags, shared by every subcommand. Each is optional: an
/// absent flag falls back to its environment variable, then to the default.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigFlags {
    /// TCP port to listen on [env: PORT or SKIFF_PORT] [default: 8080]
    #[arg(long)]
    pub port: Option<String>,
    /// Address to bind [env: SKIFF_BIND] [default: 0.0.0.0]
    #[arg(long)]
    pub bind: Option<String>,
    /// Database URL: sqlite://FILE, sqlite::memory: or postgres://… [env: DATABASE_URL]
    #[arg(long)]
    pub database_url: Option<String>,
    /// Log filter, e.g. `info` or `skiff=debug` [env: SKIFF_LOG or RUST_LOG]
    #[arg(long)]
    pub log: Option<String>,
    /// Log format: text or json [env: SKIFF_LOG_FORMAT]
    #[arg(long)]
    pub log_format: Option<String>,
    /// Per-request timeout, e.g. 10s [env: SKIFF_REQUEST_TIMEOUT]
    #[arg(long)]
    pub request_timeout: Option<String>,
    /// Request body limit, e.g. 64KiB [env: SKIFF_BODY_LIMIT]
    #[arg(long)]
    pub body_limit: Option<String>,
    /// Time in-flight requests get after SIGTERM, e.g. 10s [env: SKIFF_SHUTDOWN_GRACE]
    #[arg(long)]
    pub shutdown_grace: Option<String>,
    /// Time new connections are still served after SIGTERM, readiness down, e.g. 5s [env: SKIFF_SHUTDOWN_DELAY] [default: 0s]
    #[arg(long)]
    pub shutdown_delay: Option<String>,
    /// Default IANA time zone of /time [env: SKIFF_TIME_ZONE]
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Public-IP upstream URL (http or https) [env: SKIFF_IP_UPSTREAM]
    #[arg(long)]
    pub ip_upstream: Option<String>,
    /// Upstream timeout of /ip [env: SKIFF_IP_TIMEOUT]
    #[arg(long)]
    pub ip_timeout: Option<String>,
    /// How long a good /ip answer is cached [env: SKIFF_IP_CACHE_TTL]
    #[arg(long)]
    pub ip_cache_ttl: Option<String>,
    /// Extra PEM roots for the /ip upstream, added to the built-in ones [env: SSL_CERT_FILE]
    #[arg(long)]
    pub ssl_cert_file: Option<String>,
    /// Directory of Lua scripts served at /lua/{name} [env: SKIFF_SCRIPTS_DIR]
    #[arg(long)]
    pub scripts_dir: Option<String>,
    /// Reload the scripts when their directory changes: true or false [env: SKIFF_SCRIPTS_WATCH] [default: false]
    #[arg(long)]
    pub scripts_watch: Option<String>,
    /// Memory limit of one Lua run, e.g. 16MiB [env: SKIFF_LUA_MEMORY]
    #[arg(long)]
    pub lua_memory: Option<String>,
    /// Time limit (wall clock) of one Lua run, e.g. 100ms [env: SKIFF_LUA_TIMEOUT]
    #[arg(long)]
    pub lua_timeout: Option<String>,
    /// Comma-separated origins allowed by CORS, e.g. https://app.example.com, or * [env: SKIFF_CORS_ORIGINS] [default: none]
    #[arg(long)]
    pub cors_origins: Option<String>,
    /// Requests served at once before shedding with 503; 0 = no limit [env: SKIFF_MAX_CONCURRENCY] [default: 1024]
    #[arg(long)]
    pub max_concurrency: Option<String>,
    /// TCP connections open at once [env: SKIFF_MAX_CONNECTIONS] [default: 4096]
    #[arg(long)]
    pub max_connections: Option<String>,
    /// Time a client has to send its request headers [env: SKIFF_HEADER_TIMEOUT] [default: 5s]
    #[arg(long)]
    pub header_timeout: Option<String>,
    /// Time a kept-alive connection may wait for its next request [env: SKIFF_IDLE_TIMEOUT] [default: 75s]
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// User name HTTP Basic requires on /users [env: SKIFF_API_USER]
    #[arg(long)]
    pub api_user: Option<String>,
    /// Password for --api-user; visible to `ps`, prefer --api-password-file [env: SKIFF_API_PASSWORD]
    #[arg(long)]
    pub api_password: Option<String>,
    /// File holding the password for --api-user [env: SKIFF_API_PASSWORD_FILE]
    #[arg(long)]
    pub api_password_file: Option<String>,
    /// Longest wait for the next piece of a request body [env: SKIFF_BODY_TIMEOUT] [default: 5s]
    #[arg(long)]
    pub body_timeout: Option<String>,
    /// Longest time a client may accept no bytes of an answer [env: SKIFF_SEND_TIMEOUT] [default: 10s]
    #[arg(long)]
    pub send_timeout: Option<String>,
}

/// Where values come from: the flags, then a lookup of environment variables.
/// Tests pass a map instead of the process environment.
pub struct Sources<'a> {
    pub flags: &'a ConfigFlags,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// The first value found among the flag and the variables, with the name
    /// of where it came from (for error messages).
    fn lookup(&self, flag: (&str, &Option<String>), vars: &[&str]) -> Option<(String, String)> {
        if let Some(v) = flag.1 {
            return Some((format!("--{}", flag.0), v.clone()));
        }
        vars.iter()
            .find_map(|var| (self.env)(var).map(|v| (var.to_string(), v)))
    }
}

fn parse_with<T>(
    found: Option<(String, String)>,
    default: T,
    expected: &str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<T, ConfigError> {
    match found {
        None => Ok(default),
        Some((source, value)) => parse(value.trim()).ok_or_else(|| ConfigError {
            name: source,
            value,
            expected: expected.into(),
        }),
    }
}

impl Config {
    /// Reads the configuration from flags and the process environment.
    pub fn load(flags: &ConfigFlags) -> Result<Self, ConfigError> {
        let env = |name: &str| std::env::var(name).ok();
        Self::from_sources(&Sources { flags, env: &env })
    }

    pub fn from_sources(src: &Sources<'_>) -> Result<Self, ConfigError> {
        let d = Config::default();
        let f = src.flags;
        let duration = "a duration such as 250ms, 3s, 1m or 1h (at most 100 years)";
        let size = "a size such as 65536, 64KiB or 16MiB";

        let port = parse_with(
            src.lookup(("port", &f.port), &["PORT", "SKIFF_PORT"]),
            d.port,
            "a TCP port number (0-65535)",
            |v| v.parse().ok(),
        )?;
        let bind = parse_with(
            src.lookup(("bind", &f.bind), &["SKIFF_BIND"]),
            d.bind,
            "an IP address such as 0.0.0.0 or 127.0.0.1",
            |v| v.parse().ok(),
        )?;
        let database_url = parse_with(
            src.lookup(("database-url", &f.database_url), &["DATABASE_URL"]),
            d.database_url,
            "a URL starting with sqlite: or postgres://",
            |v| {
                let ok = v.starts_with("sqlite:")
                    || v.starts_with("postgres://")
                    || v.starts_with("postgresql://");
                ok.then(|| v.to_string())
            },
        )
        .map_err(|mut e| {
            // The error is printed: never with the database password.
            e.value = redact_password(&e.value);
            e
        })?;
        let log_filter = parse_with(
            src.lookup(("log", &f.log), &["SKIFF_LOG", "RUST_LOG"]),
            d.log_filter,
            "a log filter: a level (trace, debug, info, warn, error or off) and target=level \
             pairs, such as info or skiff=debug,warn",
            |v| crate::telemetry::parse_log_filter(v).map(|_| v.to_string()),
        )?;
        let log_format = parse_with(
            src.lookup(("log-format", &f.log_format), &["SKIFF_LOG_FORMAT"]),
            d.log_format,
            "text or json",
            |v| match v.to_ascii_lowercase().as_str() {
                "text" => Some(LogFormat::Text),
                "json" => Some(LogFormat::Json),
                _ => None,
            },
        )?;
        let positive = |v: &str| parse_duration(v).filter(|d| !d.is_zero());
        let request_timeout = parse_with(
            src.lookup(
                ("request-timeout", &f.request_timeout),
                &["SKIFF_REQUEST_TIMEOUT"],
            ),
            d.request_timeout,
            duration,
            positive,
        )?;
        let body_limit = parse_with(
            src.lookup(("body-limit", &f.body_limit), &["SKIFF_BODY_LIMIT"]),
            d.body_limit,
            size,
            parse_size,
        )?;
        let shutdown_grace = parse_with(
            src.lookup(
                ("shutdown-grace", &f.shutdown_grace),
                &["SKIFF_SHUTDOWN_GRACE"],
            ),
            d.shutdown_grace,
            duration,
            parse_duration,
        )?;
        let shutdown_delay = parse_with(
            src.lookup(
                ("shutdown-delay", &f.shutdown_delay),
                &["SKIFF_SHUTDOWN_DELAY"],
            ),
            d.shutdown_delay,
            duration,
            parse_duration,
        )?;
        let (time_zone, time_zone_name) = parse_with(
            src.lookup(("time-zone", &f.time_zone), &["SKIFF_TIME_ZONE"]),
            (d.time_zone, d.time_zone_name),
            "an IANA time zone name such as Asia/Tokyo or UTC",
            |v| {
                jiff::tz::TimeZone::get(v)
                    .ok()
                    .map(|tz| (tz, v.to_string()))
            },
        )?;
        let ip_upstream = parse_with(
            src.lookup(("ip-upstream", &f.ip_upstream), &["SKIFF_IP_UPSTREAM"]),
            d.ip_upstream,
            "an http:// or https:// URL",
            |v| {
                let rest = v
                    .strip_prefix("https://")
                    .or_else(|| v.strip_prefix("http://"))?;
                (!rest.is_empty() && !rest.contains(char::is_whitespace)).then(|| v.to_string())
            },
        )?;
        let ip_timeout = parse_with(
            src.lookup(("ip-timeout", &f.ip_timeout), &["SKIFF_IP_TIMEOUT"]),
            d.ip_timeout,
            duration,
            positive,
        )?;
        let ip_cache_ttl = parse_with(
            src.lookup(("ip-cache-ttl", &f.ip_cache_ttl), &["SKIFF_IP_CACHE_TTL"]),
            d.ip_cache_ttl,
            duration,
            parse_duration,
        )?;
        let ssl_cert_file = parse_with(
            src.lookup(("ssl-cert-file", &f.ssl_cert_file), &["SSL_CERT_FILE"]),
            None,
            "a readable file of PEM certificates",
            // Empty means unset, as OpenSSL reads it.
            |v| match v {
                "" => Some(None),
                _ => std::fs::File::open(v)
                    .is_ok()
                    .then(|| Some(PathBuf::from(v))),
            },
        )?;
        let scripts = src.lookup(("scripts-dir", &f.scripts_dir), &["SKIFF_SCRIPTS_DIR"]);
        let scripts_dir_explicit = scripts.is_some();
        // Set explicitly, the directory must exist: a typo would otherwise
        // serve no scripts (the default `lua` is optional).
        let scripts_dir = parse_with(scripts, d.scripts_dir, "a readable directory", |v| {
            (!v.is_empty() && std::fs::read_dir(v).is_ok()).then(|| PathBuf::from(v))
        })?;
        let scripts_watch = parse_with(
            src.lookup(
                ("scripts-watch", &f.scripts_watch),
                &["SKIFF_SCRIPTS_WATCH"],
            ),
            d.scripts_watch,
            "true or false",
            |v| match v {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            },
        )?;
        let lua_memory = parse_with(
            src.lookup(("lua-memory", &f.lua_memory), &["SKIFF_LUA_MEMORY"]),
            d.lua_memory,
            "a size of at least 256KiB, such as 16MiB",
            |v| parse_size(v).filter(|&n| n >= 256 * 1024),
        )?;
        let lua_timeout = parse_with(
            src.lookup(("lua-timeout", &f.lua_timeout), &["SKIFF_LUA_TIMEOUT"]),
            d.lua_timeout,
            duration,
            positive,
        )?;
        let cors_origins = parse_with(
            src.lookup(("cors-origins", &f.cors_origins), &["SKIFF_CORS_ORIGINS"]),
            d.cors_origins,
            "comma-separated origins such as https://app.example.com,http://localhost:3000 \
             (scheme, host and optional port; no path), or *",
            CorsOrigins::parse,
        )?;
        let max_concurrency = parse_with(
            src.lookup(
                ("max-concurrency", &f.max_concurrency),
                &["SKIFF_MAX_CONCURRENCY"],
            ),
            d.max_concurrency,
            "a whole number (0 for no limit)",
            |v| v.parse().ok(),
        )?;
        let max_connections = parse_with(
            src.lookup(
                ("max-connections", &f.max_connections),
                &["SKIFF_MAX_CONNECTIONS"],
            ),
            d.max_connections,
            "a whole number of at least 1",
            |v| v.parse().ok().filter(|&n: &u32| n >= 1),
        )?;
        let header_timeout = parse_with(
            src.lookup(
                ("header-timeout", &f.header_timeout),
                &["SKIFF_HEADER_TIMEOUT"],
            ),
            d.header_timeout,
            duration,
            positive,
        )?;
        let idle_timeout = parse_with(
            src.lookup(("idle-timeout", &f.idle_timeout), &["SKIFF_IDLE_TIMEOUT"]),
            d.idle_timeout,
            duration,
            positive,
        )?;
        let body_timeout = parse_with(
            src.lookup(("body-timeout", &f.body_timeout), &["SKIFF_BODY_TIMEOUT"]),
            d.body_timeout,
            duration,
            positive,
        )?;
        let send_timeout = parse_with(
            src.lookup(("send-timeout", &f.send_timeout), &["SKIFF_SEND_TIMEOUT"]),
            d.send_timeout,
            duration,
            positive,
        )?;
        let credentials = credentials(src)?;

        Ok(Config {
            port,
            bind,
            database_url,
            log_filter,
            log_format,
            request_timeout,
            body_limit,
            shutdown_grace,
            shutdown_delay,
            time_zone,
            time_zone_name,
            ip_upstream,
            ip_timeout,
            ip_cache_ttl,
            ssl_cert_file,
            scripts_dir,
            scripts_dir_explicit,
            scripts_watch,
            lua_memory,
            lua_timeout,
            cors_origins,
            credentials,
            max_concurrency,
            max_connections,
            header_timeout,
            idle_timeout,
            body_timeout,
            send_timeout,
        })
    }
}

/// `SKIFF_API_USER` with `SKIFF_API_PASSWORD` or `SKIFF_API_PASSWORD_FILE`:
/// both or neither.
fn credentials(src: &Sources<'_>) -> Result<Option<Credentials>, ConfigError> {
    let f = src.flags;
    let user = src
        .lookup(("api-user", &f.api_user), &["SKIFF_API_USER"])
        .filter(|(_, u)| !u.is_empty());
    let password = match (
        src.lookup(("api-password", &f.api_password), &["SKIFF_API_PASSWORD"]),
        src.lookup(
            ("api-password-file", &f.api_password_file),
            &["SKIFF_API_PASSWORD_FILE"],
        ),
    ) {
        (Some((source, p)), _) if !p.is_empty() => Some((source, p)),
        (_, Some((source, path))) if !path.is_empty() => {
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                name: source.clone(),
                value: path.clone(),
                expected: format!("a readable file holding the password ({e})"),
            })?;
            // Secret files usually end with a newline that is not part of it.
            let p = text.trim_end_matches(['\r', '\n']).to_string();
            if p.is_empty() {
                return Err(ConfigError {
                    name: source,
                    value: path,
                    expected: "a file holding a non-empty password".into(),
                });
            }
            Some((source, p))
        }
        _ => None,
    };
    match (user, password) {
        (None, None) => Ok(None),
        (Some((source, user)), Some((_, password))) => {
            if user.contains(':') {
                return Err(ConfigError {
                    name: source,
                    value: user,
                    expected: "a user name without ':'".into(),
                });
            }
            Ok(Some(Credentials {
                user,
                password: Secret::new(password),
            }))
        }
        (Some((source, user)), None) => Err(ConfigError {
            name: source,
            value: user,
            expected:
                "SKIFF_API_PASSWORD or SKIFF_API_PASSWORD_FILE (or their flags) to be set as well"
                    .into(),
        }),
        (None, Some((source, _))) => Err(ConfigError {
            name: source,
            value: "***".into(),
            expected: "SKIFF_API_USER (or --api-user) to be set as well".into(),
        }),
    }
}

/// The origins of `SKIFF_CORS_ORIGINS`, each as a browser sends it in
/// `Origin` (`scheme://host[:port]`, lower case), or any origin (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl CorsOrigins {
    /// `None` for a bad list; `Some(None)` for an empty one (no CORS).
    fn parse(text: &str) -> Option<Option<CorsOrigins>> {
        if text.is_empty() {
            return Some(None);
        }
        if text == "*" {
            return Some(Some(CorsOrigins::Any));
        }
        let origins = text
            .split(',')
            .map(|o| parse_origin(o.trim()))
            .collect::<Option<Vec<_>>>()?;
        Some(Some(CorsOrigins::List(origins)))
    }
}

/// An origin, serialised as browsers do: `http` or `https`, a host name or
/// IP address, an optional port; no user info, path, query or fragment.
fn parse_origin(text: &str) -> Option<String> {
    let text = text.to_ascii_lowercase();
    let rest = text
        .strip_prefix("https://")
        .or_else(|| text.strip_prefix("http://"))?;
    let (host, port) = match rest.strip_prefix('[') {
        // An IPv6 literal: [::1] or [::1]:8080.
        Some(v6) => {
            let (addr, after) = v6.split_once(']')?;
            addr.parse::<std::net::Ipv6Addr>().ok()?;
            let port = if after.is_empty() {
                None
            } else {
                Some(after.strip_prefix(':')?)
            };
            (None, port)
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(rest), None),
        },
    };
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return None;
        }
    }
    if let Some(port) = port
        && (port.is_empty()
            || !port.chars().all(|c| c.is_ascii_digit())
            || port.parse::<u16>().ok().filter(|&p| p > 0).is_none())
    {
        return None;
    }
    Some(text)
}

/// `url` with the password of its user info (`scheme://user:PASSWORD@host`)
/// replaced by `***`, for messages.
pub fn redact_password(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
        return url.to_string();
    };
    match url[start..at].find(':').map(|i| start + i) {
        Some(colon) => format!("{}***{}", &url[..=colon], &url[at..]),
        None => url.to_string(),
    }
}

/// Parses `250ms`, `3s`, `1.5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let seconds_per_unit = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "us" | "µs" => 0.000_001,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(number * seconds_per_unit)
        .ok()
        .filter(|d| *d <= MAX_DURATION)
}

/// The longest duration accepted: every timeout and TTL is added to "now",
/// and an `Instant` that far ahead would overflow and panic.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parses `65536`, `64KiB`, `64kb`, `16MiB`, `1GiB` (a bare number is bytes).
/// Decimal units (KB, MB, GB) are powers of 1000, binary ones (KiB…) of 1024.
pub fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().ok()?;
    let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(flags: &ConfigFlags, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let env = move |name: &str| map.get(name).cloned();
        Config::from_sources(&Sources { flags, env: &env })
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        for (url, shown) in [
            (
                "postgres://u:pw@h:5432/db?x=1",
                "postgres://u:***@h:5432/db?x=1",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            ("postgres://h/db?user=u@x", "postgres://h/db?user=u@x"),
            ("postgres://u:p@ss@h/db", "postgres://u:***@h/db"),
            ("sqlite://skiff.db", "sqlite://skiff.db"),
            ("nonsense", "nonsense"),
        ] {
            assert_eq!(redact_password(url), shown, "{url}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_duration("876000h"),
            Some(Duration::from_secs(876_000 * 3600))
        );
        for bad in [
            "", "s", "3x", "-1s", "1.s", ".5s", "3 s s", "1e3s", "876001h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Some(65536));
        assert_eq!(parse_size("64KiB"), Some(65536));
        assert_eq!(parse_size("64kb"), Some(64000));
        assert_eq!(parse_size("16MiB"), Some(16 << 20));
        assert_eq!(parse_size("1GiB"), Some(1 << 30));
        for bad in [
            "",
            "KiB",
            "12XB",
            "-1",
            "1.5MiB",
            "99999999999999999999999GiB",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(&ConfigFlags::default(), &[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(c.database_url, "sqlite://skiff.db");
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.body_limit, 65536);
        assert_eq!(c.time_zone_name, "Asia/Tokyo");
        assert_eq!(c.lua_memory, 16 << 20);
        assert_eq!(c.lua_timeout, Duration::from_millis(100));
        assert!(c.credentials.is_none());
        assert!(!c.scripts_dir_explicit);
        assert!(!c.scripts_watch);
        assert_eq!(c.scripts_dir, PathBuf::from("lua"));
        assert_eq!(c.ssl_cert_file, None);
    }

    #[test]
    fn credentials_and_roots_have_flags_that_win_over_the_environment() {
        let flags = ConfigFlags {
            api_user: Some("flag-user".into()),
            api_password: Some("flag-pw".into()),
            ..Default::default()
        };
        let env = [
            ("SKIFF_API_USER", "env-user"),
            ("SKIFF_API_PASSWORD", "env-pw"),
        ];
        let creds = load(&flags, &env).unwrap().credentials.unwrap();
        assert_eq!(creds.user, "flag-user");
        assert_eq!(creds.password.expose(), "flag-pw");
        let flags = ConfigFlags {
            ssl_cert_file: Some("/nonexistent/roots.pem".into()),
            ..Default::default()
        };
        assert_eq!(load(&flags, &[]).unwrap_err().name, "--ssl-cert-file");
        let e = load(
            &ConfigFlags::default(),
            &[("SKIFF_SCRIPTS_DIR", "/nonexistent")],
        );
        assert_eq!(e.unwrap_err().name, "SKIFF_SCRIPTS_DIR");
    }

    #[test]
    fn flags_win_over_environment_which_wins_over_defaults() {
        let flags = ConfigFlags {
            port: Some("9000".into()),
            ..Default::default()
        };
        let c = load(&flags, &[("PORT", "7000"), ("SKIFF_IP_TIMEOUT", "250ms")]).unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.ip_timeout, Duration::from_millis(250));
        let c = load(&ConfigFlags::default(), &[("SKIFF_PORT", "7001")]).unwrap();
        assert_eq!(c.port, 7001);
        let c = load(
            &ConfigFlags::default(),
            &[("PORT", "7000"), ("SKIFF_PORT", "7001")],
        )
        .unwrap();
        assert_eq!(c.port, 7000);
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = load(&ConfigFlags::default(), &[("PORT", "eighty")]).unwrap_err();
        assert_eq!(e.name, "PORT");
        assert!(e.to_string().contains("TCP port"), "{e}");
        let e = load(
            &ConfigFlags::default(),
            &[("SKIFF_REQUEST_TIMEOUT", "soon")],
        )
        .unwrap_err();
        assert_eq!(e.name, "SKIFF_REQUEST_TIMEOUT");
        let e = load(
            &ConfigFlags::default(),
            &[("SKIFF_TIME_ZONE", "Mars/Olympus")],
        )
        .unwrap_err();
        assert_eq!(e.name, "SKIFF_TIME_ZONE");
        let e = load(&ConfigFlags::default(), &[("SKIFF_IDLE_TIMEOUT", "0s")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_IDLE_TIMEOUT");
        let flags = ConfigFlags {
            body_limit: Some("lots".into()),
            ..Default::default()
        };
        let e = load(&flags, &[]).unwrap_err();
        assert_eq!(e.name, "--body-limit");
        let e = load(&ConfigFlags::default(), &[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.name, "DATABASE_URL");
        let url = "mysql://ada:s3:cr@t@db.example/app";
        let e = load(&ConfigFlags::default(), &[("DATABASE_URL", url)]).unwrap_err();
        assert!(!e.to_string().contains("s3:cr"), "{e}");
        assert!(
            e.to_string().contains("mysql://ada:***@db.example/app"),
            "{e}"
        );
    }

    #[test]
    fn cors_origins_are_checked_and_kept_as_browsers_send_them() {
        let origins = |v: &str| load(&ConfigFlags::default(), &[("SKIFF_CORS_ORIGINS", v)]);
        assert_eq!(origins("").unwrap().cors_origins, None);
        assert_eq!(
            load(&ConfigFlags::default(), &[]).unwrap().cors_origins,
            None
        );
        assert_eq!(origins("*").unwrap().cors_origins, Some(CorsOrigins::Any));
        assert_eq!(
            origins("https://App.Example.com, http://localhost:3000,http://[::1]:8080")
                .unwrap()
                .cors_origins,
            Some(CorsOrigins::List(vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
                "http://[::1]:8080".into(),
            ]))
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "ftp://app.example.com",
            "https://",
            "https://app.example.com:0",
            "https://app.example.com:65536",
            "https://app.example.com:",
            "https://user@app.example.com",
            "https://app example.com",
            "https://-app.example.com",
            "https://app..example.com",
            "https://app.example.com,",
            "https://a.example,*",
            "http://[::1",
            "http://[nope]",
            "null",
        ] {
            let e = origins(bad).unwrap_err();
            assert_eq!(e.name, "SKIFF_CORS_ORIGINS", "{bad:?}");
        }
    }

    #[test]
    fn the_shutdown_delay_defaults_to_zero() {
        let c = load(&ConfigFlags::default(), &[]).unwrap();
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        let c = load(&ConfigFlags::default(), &[("SKIFF_SHUTDOWN_DELAY", "5s")]).unwrap();
        assert_eq!(c.shutdown_delay, Duration::from_secs(5));
    }

    #[test]
    fn credentials_need_both_halves_and_hide_the_password() {
        let e = load(&ConfigFlags::default(), &[("SKIFF_API_USER", "admin")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_API_USER");
        let c = load(
            &ConfigFlags::default(),
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD", "hunter2"),
            ],
        )
        .unwrap();
        let creds = c.credentials.unwrap();
        assert_eq!(creds.password.expose(), "hunter2");
        assert!(!format!("{creds:?}").contains("hunter2"));
    }

    #[test]
    fn password_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = load(
            &ConfigFlags::default(),
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD_FILE", path.to_str().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.unwrap().password.expose(), "s3cret");
        let e = load(
            &ConfigFlags::default(),
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD_FILE", "/nonexistent/pw"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.name, "SKIFF_API_PASSWORD_FILE");
    }
}
