//! Configuration: command-line flags win over environment variables, which
//! win over the defaults of `../shared/API.md`.
//!
//! Each setting is declared once, in [`settings!`] below: its field of
//! [`Config`], flag, variables, default, parser (in [`parse`]) and help. A
//! command offers the flags of the settings it uses ([`Flags`]) and reads
//! only their variables. Every value is parsed here, at the edge; a bad one
//! becomes a [`ConfigError`] naming the flag or variable it came from and
//! what it expected, which `cli` prints on one line before exiting with 2.
//!
//! The variables are read here rather than by clap's `env`: clap takes one
//! variable per flag (`PORT` or `SKIFF_PORT`, `SKIFF_LOG` or `RUST_LOG`),
//! reads a parent command's variables even when a subcommand runs (a bad
//! Lua setting would stop `skiff migrate`), and names the flag for a bad
//! value that came from the variable.

pub mod parse;

use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing_subscriber::filter::Targets;

pub use parse::{parse_duration, parse_log_filter, parse_size, redact_password};

/// A value given on the command line or in the environment that does not
/// parse. `name` is the flag (`--port`) or the variable (`PORT`).
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: expected {expected}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub expected: String,
}

/// One setting: where its value comes from, its default and its help.
#[derive(Debug)]
pub struct Setting {
    /// The field of [`Config`], and the clap argument id.
    pub id: &'static str,
    pub flag: &'static str,
    /// Read in this order when the flag is absent.
    pub env: &'static [&'static str],
    /// Parsed like a given value; empty means unset.
    pub default: &'static str,
    pub help: &'static str,
    /// Never shown: errors show `***` (a URL's password only).
    pub secret: bool,
}

/// Declares the settings: `field: Type = "default", flag "name", env "VAR"
/// | "FALLBACK", parse parser [, secret];` with the doc comment as help.
/// Gives the [`Config`] struct (plus the fields derived from several
/// settings), [`SETTINGS`], and the reading of each from its sources.
macro_rules! settings {
    (@secret secret) => { true };
    (@secret) => { false };
    (
        $(
            $(#[doc = $doc:literal])+
            $field:ident: $ty:ty = $default:literal, flag $flag:literal,
                env $($env:literal)|+, parse $parse:path $(, $secret:ident)?;
        )+
        derived {
            $( $(#[doc = $ddoc:literal])+ $dfield:ident: $dty:ty, )+
        }
    ) => {
        /// Everything the service reads at start-up, typed and validated.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])+ pub $field: $ty, )+
            $( $(#[doc = $ddoc])+ pub $dfield: $dty, )+
        }

        /// Every setting, in the order of `skiff serve --help`.
        pub static SETTINGS: &[Setting] = &[$(
            Setting {
                id: stringify!($field),
                flag: $flag,
                env: &[$($env),+],
                default: $default,
                help: concat!($($doc),+),
                secret: settings!(@secret $($secret)?),
            },
        )+];

        /// The ids of every setting: what `serve` offers.
        pub const ALL: &[&str] = &[$(stringify!($field)),+];

        impl Config {
            /// Each setting from its first source, else its default.
            fn read(src: &Sources<'_>, given: &mut Given) -> Result<Self, ConfigError> {
                Ok(Config {
                    $( $field: src.value(stringify!($field), given, $parse)?, )+
                    $( $dfield: Default::default(), )+
                })
            }
        }
    };
}

settings! {
    /// TCP port the server listens on
    port: u16 = "8080", flag "port", env "PORT" | "SKIFF_PORT", parse parse::port;
    /// Address to bind
    bind: IpAddr = "0.0.0.0", flag "bind", env "SKIFF_BIND", parse parse::ip_address;
    /// Database URL: sqlite://FILE, sqlite::memory: or postgres://…
    database_url: String = "sqlite://skiff.db", flag "database-url", env "DATABASE_URL",
        parse parse::database_url, secret;
    /// Log filter, e.g. `info` or `skiff=debug,warn`
    log_filter: Targets = "info", flag "log", env "SKIFF_LOG" | "RUST_LOG",
        parse parse::log_filter;
    /// Log format: text or json
    log_format: LogFormat = "text", flag "log-format", env "SKIFF_LOG_FORMAT",
        parse parse::log_format;
    /// Per-request timeout (503 past it)
    request_timeout: Duration = "10s", flag "request-timeout", env "SKIFF_REQUEST_TIMEOUT",
        parse parse::positive_duration;
    /// Largest request body (413 past it)
    body_limit: usize = "64KiB", flag "body-limit", env "SKIFF_BODY_LIMIT", parse parse::size;
    /// Time in-flight requests get once accepting has stopped
    shutdown_grace: Duration = "10s", flag "shutdown-grace", env "SKIFF_SHUTDOWN_GRACE",
        parse parse::duration;
    /// After SIGTERM, how long new connections are still accepted and
    /// served (with readiness down) before accepting stops
    shutdown_delay: Duration = "0s", flag "shutdown-delay", env "SKIFF_SHUTDOWN_DELAY",
        parse parse::duration;
    /// Default IANA time zone of /time
    time_zone: jiff::tz::TimeZone = "Asia/Tokyo", flag "time-zone", env "SKIFF_TIME_ZONE",
        parse parse::time_zone;
    /// Public-IP upstream URL (http or https)
    ip_upstream: String = "https://api.ipify.org", flag "ip-upstream", env "SKIFF_IP_UPSTREAM",
        parse parse::http_url;
    /// Upstream timeout of /ip (504 past it)
    ip_timeout: Duration = "3s", flag "ip-timeout", env "SKIFF_IP_TIMEOUT",
        parse parse::positive_duration;
    /// How long a good /ip answer is cached (0s: never)
    ip_cache_ttl: Duration = "60s", flag "ip-cache-ttl", env "SKIFF_IP_CACHE_TTL",
        parse parse::duration;
    /// A PEM file of extra roots for the /ip upstream, added to the
    /// compiled-in ones
    ssl_cert_file: Option<PathBuf> = "", flag "ssl-cert-file", env "SSL_CERT_FILE",
        parse parse::pem_file;
    /// Directory of Lua scripts served at /lua/{name}; when set, it must
    /// be a readable directory
    scripts_dir: PathBuf = "lua", flag "scripts-dir", env "SKIFF_SCRIPTS_DIR",
        parse parse::directory;
    /// Reload the scripts when their directory changes: true or false
    scripts_watch: bool = "false", flag "scripts-watch", env "SKIFF_SCRIPTS_WATCH",
        parse parse::boolean;
    /// Memory limit of one Lua run
    lua_memory: usize = "16MiB", flag "lua-memory", env "SKIFF_LUA_MEMORY",
        parse parse::lua_memory;
    /// Time limit of one Lua run: a wall-clock deadline per run, enforced
    /// by a hook on instructions and calls
    lua_timeout: Duration = "100ms", flag "lua-timeout", env "SKIFF_LUA_TIMEOUT",
        parse parse::positive_duration;
    /// Comma-separated origins answered with CORS headers, e.g.
    /// https://app.example.com, or *; unset: no CORS headers
    cors_origins: Option<CorsOrigins> = "", flag "cors-origins", env "SKIFF_CORS_ORIGINS",
        parse parse::cors_origins;
    /// Requests served at once before new ones are shed with 503; 0 = no
    /// limit (health and metrics routes are never shed)
    max_concurrency: usize = "1024", flag "max-concurrency", env "SKIFF_MAX_CONCURRENCY",
        parse parse::count;
    /// TCP connections open at once; more are closed as soon as accepted
    max_connections: u32 = "4096", flag "max-connections", env "SKIFF_MAX_CONNECTIONS",
        parse parse::positive_count;
    /// Time a client has to send its request head
    header_timeout: Duration = "5s", flag "header-timeout", env "SKIFF_HEADER_TIMEOUT",
        parse parse::positive_duration;
    /// Time a kept-alive connection may wait for its next request
    idle_timeout: Duration = "75s", flag "idle-timeout", env "SKIFF_IDLE_TIMEOUT",
        parse parse::positive_duration;
    /// Longest wait for the next piece of a request body (408 past it)
    body_timeout: Duration = "5s", flag "body-timeout", env "SKIFF_BODY_TIMEOUT",
        parse parse::positive_duration;
    /// Longest time a client may accept no bytes of an answer (the
    /// connection is closed past it)
    send_timeout: Duration = "10s", flag "send-timeout", env "SKIFF_SEND_TIMEOUT",
        parse parse::positive_duration;
    /// User name HTTP Basic requires on /users
    api_user: Option<String> = "", flag "api-user", env "SKIFF_API_USER",
        parse parse::user_name;
    /// Password for --api-user; visible to `ps`, prefer --api-password-file
    api_password: Option<Secret> = "", flag "api-password", env "SKIFF_API_PASSWORD",
        parse parse::secret, secret;
    /// File holding the password for --api-user
    api_password_file: Option<PathBuf> = "", flag "api-password-file",
        env "SKIFF_API_PASSWORD_FILE", parse parse::file;
    derived {
        /// The IANA name of `time_zone`, as configured.
        time_zone_name: String,
        /// Whether `scripts_dir` was set explicitly (then it must exist).
        scripts_dir_explicit: bool,
        /// HTTP Basic credentials guarding `/users`: `api_user` with
        /// `api_password` or the content of `api_password_file`.
        credentials: Option<Credentials>,
    }
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

/// The origins of `SKIFF_CORS_ORIGINS`, each as a browser sends it in
/// `Origin` (`scheme://host[:port]`, lower case), or any origin (`*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

impl Default for Config {
    fn default() -> Self {
        Config::from_sources(&Sources {
            offered: &[],
            flag: &|_| None,
            env: &|_| None,
        })
        .expect("the defaults parse")
    }
}

/// Where values come from: the flags, then a lookup of environment
/// variables, for the settings the command offers only. Tests pass maps.
pub struct Sources<'a> {
    pub offered: &'a [&'a str],
    /// The flag's value by setting id.
    pub flag: &'a dyn Fn(&str) -> Option<String>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The settings that were given, with where from and as what text.
#[derive(Default)]
struct Given(Vec<(&'static str, String, String)>);

impl Given {
    fn get(&self, id: &str) -> Option<(&str, &str)> {
        self.0
            .iter()
            .find(|(i, _, _)| *i == id)
            .map(|(_, source, raw)| (source.as_str(), raw.as_str()))
    }
}

/// The declaration of setting `id`.
pub fn setting(id: &str) -> &'static Setting {
    SETTINGS
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no setting {id}"))
}

impl Setting {
    /// The flag, with the variables and the default in its help.
    pub fn arg(&self) -> clap::Arg {
        let mut help = format!("{} [env: {}]", self.help.trim(), self.env.join(" or "));
        if !self.default.is_empty() {
            help += &format!(" [default: {}]", self.default);
        }
        // Built once per process: the leak is a few bytes.
        let value_name = self.flag.to_ascii_uppercase().replace('-', "_");
        let value_name: &'static str = Box::leak(value_name.into_boxed_str());
        clap::Arg::new(self.id)
            .long(self.flag)
            .value_name(value_name)
            .help(help)
    }

    /// How a bad value is shown: never a secret.
    fn shown(&self, value: &str) -> String {
        match (self.secret, value.contains("://")) {
            (false, _) => value.to_string(),
            (true, true) => redact_password(value),
            (true, false) => "***".into(),
        }
    }
}

impl Sources<'_> {
    /// The value of setting `id`: parsed from its flag or first variable
    /// (noted in `given`), else from its default.
    fn value<T>(
        &self,
        id: &'static str,
        given: &mut Given,
        parse: fn(&str) -> parse::Parsed<T>,
    ) -> Result<T, ConfigError> {
        let s = setting(id);
        let found = if self.offered.contains(&id) {
            (self.flag)(id)
                .map(|v| (format!("--{}", s.flag), v))
                .or_else(|| {
                    s.env
                        .iter()
                        .find_map(|var| (self.env)(var).map(|v| (var.to_string(), v)))
                })
        } else {
            None
        };
        match found {
            None => Ok(parse(s.default).expect("the defaults parse")),
            Some((source, value)) => match parse(value.trim()) {
                Ok(v) => {
                    given.0.push((id, source, value.trim().to_string()));
                    Ok(v)
                }
                Err(expected) => Err(ConfigError {
                    value: s.shown(&value),
                    name: source,
                    expected: expected.into(),
                }),
            },
        }
    }
}

impl Config {
    /// Reads the settings `offered` from flags and the process environment.
    pub fn load<O: Offer>(flags: &Flags<O>) -> Result<Self, ConfigError> {
        Self::from_sources(&Sources {
            offered: O::SETTINGS,
            flag: &|id| flags.get(id).map(str::to_string),
            env: &|name| std::env::var(name).ok(),
        })
    }

    pub fn from_sources(src: &Sources<'_>) -> Result<Self, ConfigError> {
        let mut given = Given::default();
        let mut config = Config::read(src, &mut given)?;
        config.time_zone_name = match given.get("time_zone") {
            Some((_, name)) => name.to_string(),
            None => setting("time_zone").default.to_string(),
        };
        // Set explicitly, the directory must exist: a typo would otherwise
        // serve no scripts (the default `lua` is optional).
        if let Some((source, dir)) = given.get("scripts_dir") {
            config.scripts_dir_explicit = true;
            if std::fs::read_dir(dir).is_err() {
                return Err(ConfigError {
                    name: source.into(),
                    value: dir.into(),
                    expected: "a readable directory".into(),
                });
            }
        }
        config.credentials = credentials(&config, &given)?;
        Ok(config)
    }
}

/// `api_user` with `api_password` or `api_password_file`: both or neither.
fn credentials(config: &Config, given: &Given) -> Result<Option<Credentials>, ConfigError> {
    let password = match (&config.api_password, &config.api_password_file) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(path)) => {
            let (source, _) = given.get("api_password_file").unwrap_or_default();
            let error = |expected: String| ConfigError {
                name: source.into(),
                value: path.display().to_string(),
                expected,
            };
            let text = std::fs::read_to_string(path)
                .map_err(|e| error(format!("a readable file holding the password ({e})")))?;
            // Secret files usually end with a newline that is not part of it.
            let p = text.trim_end_matches(['\r', '\n']);
            if p.is_empty() {
                return Err(error("a file holding a non-empty password".into()));
            }
            Some(Secret::new(p))
        }
        (None, None) => None,
    };
    match (&config.api_user, password) {
        (None, None) => Ok(None),
        (Some(user), Some(password)) => Ok(Some(Credentials {
            user: user.clone(),
            password,
        })),
        (Some(user), None) => Err(ConfigError {
            name: given.get("api_user").unwrap_or_default().0.into(),
            value: user.clone(),
            expected:
                "SKIFF_API_PASSWORD or SKIFF_API_PASSWORD_FILE (or their flags) to be set as well"
                    .into(),
        }),
        (None, Some(_)) => Err(ConfigError {
            name: given
                .get("api_password")
                .or_else(|| given.get("api_password_file"))
                .unwrap_or_default()
                .0
                .into(),
            value: "***".into(),
            expected: "SKIFF_API_USER (or --api-user) to be set as well".into(),
        }),
    }
}

/// Which settings a command offers (and so reads).
pub trait Offer {
    const SETTINGS: &'static [&'static str];
    /// The flags also go after a subcommand (`skiff db --database-url U
    /// status` and `skiff db status --database-url U`).
    const GLOBAL: bool = false;
}

/// A command's setting flags as given (text, parsed by [`Config::load`]);
/// as a clap `Args`, the flags of `O::SETTINGS`.
pub struct Flags<O> {
    values: Vec<(&'static str, String)>,
    offer: PhantomData<O>,
}

impl<O> Flags<O> {
    pub fn get(&self, id: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v.as_str())
    }
}

impl<O> fmt::Debug for Flags<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values may be secrets: the ids given only.
        let ids: Vec<&str> = self.values.iter().map(|(id, _)| *id).collect();
        f.debug_struct("Flags").field("given", &ids).finish()
    }
}

impl<O: Offer> clap::FromArgMatches for Flags<O> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let values = O::SETTINGS
            .iter()
            .filter_map(|&id| matches.get_one::<String>(id).map(|v| (id, v.clone())))
            .collect();
        Ok(Self {
            values,
            offer: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl<O: Offer> clap::Args for Flags<O> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.args(
            O::SETTINGS
                .iter()
                .map(|id| setting(id).arg().global(O::GLOBAL)),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(flags: &[(&str, &str)], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let (flags, vars) = (map(flags), map(vars));
        Config::from_sources(&Sources {
            offered: ALL,
            flag: &|id| flags.get(id).cloned(),
            env: &|name| vars.get(name).cloned(),
        })
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(&[], &[]).unwrap();
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
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        let d = Config::default();
        assert_eq!((d.port, d.time_zone_name), (8080, "Asia/Tokyo".into()));
    }

    #[test]
    fn every_setting_has_a_flag_a_variable_and_help() {
        for s in SETTINGS {
            assert_eq!(s.flag, s.id.replace('_', "-").replace("log-filter", "log"));
            assert!(!s.env.is_empty() && !s.help.trim().is_empty(), "{s:?}");
        }
    }

    #[test]
    fn a_command_reads_only_the_settings_it_offers() {
        let vars: HashMap<&str, &str> = [("SKIFF_LUA_MEMORY", "lots"), ("PORT", "9")].into();
        let c = Config::from_sources(&Sources {
            offered: &["port"],
            flag: &|_| None,
            env: &|name| vars.get(name).map(|v| v.to_string()),
        })
        .unwrap();
        assert_eq!(c.port, 9);
    }

    #[test]
    fn credentials_and_roots_have_flags_that_win_over_the_environment() {
        let flags = [("api_user", "flag-user"), ("api_password", "flag-pw")];
        let env = [
            ("SKIFF_API_USER", "env-user"),
            ("SKIFF_API_PASSWORD", "env-pw"),
        ];
        let creds = load(&flags, &env).unwrap().credentials.unwrap();
        assert_eq!(creds.user, "flag-user");
        assert_eq!(creds.password.expose(), "flag-pw");
        let flags = [("ssl_cert_file", "/nonexistent/roots.pem")];
        assert_eq!(load(&flags, &[]).unwrap_err().name, "--ssl-cert-file");
        let e = load(&[], &[("SKIFF_SCRIPTS_DIR", "/nonexistent")]);
        assert_eq!(e.unwrap_err().name, "SKIFF_SCRIPTS_DIR");
    }

    #[test]
    fn flags_win_over_environment_which_wins_over_defaults() {
        let c = load(
            &[("port", "9000")],
            &[("PORT", "7000"), ("SKIFF_IP_TIMEOUT", "250ms")],
        )
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.ip_timeout, Duration::from_millis(250));
        let c = load(&[], &[("SKIFF_PORT", "7001")]).unwrap();
        assert_eq!(c.port, 7001);
        let c = load(&[], &[("PORT", "7000"), ("SKIFF_PORT", "7001")]).unwrap();
        assert_eq!(c.port, 7000);
        let c = load(
            &[],
            &[("RUST_LOG", "debug"), ("SKIFF_SHUTDOWN_GRACE", "1m30s")],
        )
        .unwrap();
        assert_eq!(c.shutdown_grace, Duration::from_secs(90));
        let e = load(&[], &[("RUST_LOG", "verbose")]).unwrap_err();
        assert_eq!(e.name, "RUST_LOG");
    }

    #[test]
    fn bad_values_name_their_source() {
        let e = load(&[], &[("PORT", "eighty")]).unwrap_err();
        assert_eq!(e.name, "PORT");
        assert!(e.to_string().contains("TCP port"), "{e}");
        let e = load(&[], &[("SKIFF_REQUEST_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_REQUEST_TIMEOUT");
        let e = load(&[], &[("SKIFF_TIME_ZONE", "Mars/Olympus")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_TIME_ZONE");
        let e = load(&[], &[("SKIFF_IDLE_TIMEOUT", "0s")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_IDLE_TIMEOUT");
        let e = load(&[("body_limit", "lots")], &[]).unwrap_err();
        assert_eq!(e.name, "--body-limit");
        let e = load(&[], &[("DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(e.name, "DATABASE_URL");
        let url = "mysql://ada:s3:cr@t@db.example/app";
        let e = load(&[], &[("DATABASE_URL", url)]).unwrap_err();
        assert!(!e.to_string().contains("s3:cr"), "{e}");
        assert!(
            e.to_string().contains("mysql://ada:***@db.example/app"),
            "{e}"
        );
    }

    #[test]
    fn cors_origins_are_checked_and_kept_as_browsers_send_them() {
        let origins = |v: &str| load(&[], &[("SKIFF_CORS_ORIGINS", v)]);
        assert_eq!(origins("").unwrap().cors_origins, None);
        assert_eq!(load(&[], &[]).unwrap().cors_origins, None);
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
    fn credentials_need_both_halves_and_hide_the_password() {
        let e = load(&[], &[("SKIFF_API_USER", "admin")]).unwrap_err();
        assert_eq!(e.name, "SKIFF_API_USER");
        let e = load(&[("api_password", "hunter2")], &[]).unwrap_err();
        assert_eq!(e.name, "--api-password");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let c = load(
            &[],
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD", "hunter2"),
            ],
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        let creds = c.credentials.unwrap();
        assert_eq!(creds.password.expose(), "hunter2");
    }

    #[test]
    fn password_file_is_read_without_its_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let c = load(
            &[],
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD_FILE", path.to_str().unwrap()),
            ],
        )
        .unwrap();
        assert_eq!(c.credentials.unwrap().password.expose(), "s3cret");
        let e = load(
            &[],
            &[
                ("SKIFF_API_USER", "admin"),
                ("SKIFF_API_PASSWORD_FILE", "/nonexistent/pw"),
            ],
        )
        .unwrap_err();
        assert_eq!(e.name, "SKIFF_API_PASSWORD_FILE");
    }
}
