//! The parsers of the setting types: each takes the text of a flag or
//! variable (already trimmed) and gives the typed value, or what it
//! expected. An empty text means "unset" for the optional settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing_subscriber::filter::Targets;

use super::{CorsOrigins, LogFormat, Secret};

/// What a parser expected, for the one-line error.
pub type Parsed<T> = Result<T, &'static str>;

const DURATION: &str = "a duration such as 250ms, 3s, 1m30s or 1h (at most 100 years)";

pub fn port(v: &str) -> Parsed<u16> {
    v.parse().map_err(|_| "a TCP port number (0-65535)")
}

pub fn ip_address(v: &str) -> Parsed<IpAddr> {
    v.parse()
        .map_err(|_| "an IP address such as 0.0.0.0 or 127.0.0.1")
}

pub fn database_url(v: &str) -> Parsed<String> {
    let ok =
        v.starts_with("sqlite:") || v.starts_with("postgres://") || v.starts_with("postgresql://");
    ok.then(|| v.to_string())
        .ok_or("a URL starting with sqlite: or postgres://")
}

pub fn log_filter(v: &str) -> Parsed<Targets> {
    parse_log_filter(v).ok_or(
        "a log filter: a level (trace, debug, info, warn, error or off) and target=level \
         pairs, such as info or skiff=debug,warn",
    )
}

pub fn log_format(v: &str) -> Parsed<LogFormat> {
    match v.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("text or json"),
    }
}

pub fn duration(v: &str) -> Parsed<Duration> {
    parse_duration(v).ok_or(DURATION)
}

/// A duration above zero (a zero timeout would refuse everything).
pub fn positive_duration(v: &str) -> Parsed<Duration> {
    parse_duration(v).filter(|d| !d.is_zero()).ok_or(DURATION)
}

pub fn size(v: &str) -> Parsed<usize> {
    parse_size(v).ok_or("a size such as 65536, 64KiB or 16MiB")
}

pub fn lua_memory(v: &str) -> Parsed<usize> {
    parse_size(v)
        .filter(|&n| n >= 256 * 1024)
        .ok_or("a size of at least 256KiB, such as 16MiB")
}

pub fn time_zone(v: &str) -> Parsed<jiff::tz::TimeZone> {
    jiff::tz::TimeZone::get(v).map_err(|_| "an IANA time zone name such as Asia/Tokyo or UTC")
}

pub fn http_url(v: &str) -> Parsed<String> {
    let rest = v
        .strip_prefix("https://")
        .or_else(|| v.strip_prefix("http://"));
    match rest {
        Some(rest) if !rest.is_empty() && !rest.contains(char::is_whitespace) => Ok(v.to_string()),
        _ => Err("an http:// or https:// URL"),
    }
}

/// A readable file; empty means unset, as OpenSSL reads `SSL_CERT_FILE`.
pub fn pem_file(v: &str) -> Parsed<Option<PathBuf>> {
    match v {
        "" => Ok(None),
        _ => std::fs::File::open(v)
            .map(|_| Some(PathBuf::from(v)))
            .map_err(|_| "a readable file of PEM certificates"),
    }
}

/// A directory path; whether it must exist is decided by who set it.
pub fn directory(v: &str) -> Parsed<PathBuf> {
    match v {
        "" => Err("a readable directory"),
        _ => Ok(PathBuf::from(v)),
    }
}

pub fn boolean(v: &str) -> Parsed<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("true or false"),
    }
}

pub fn count(v: &str) -> Parsed<usize> {
    v.parse().map_err(|_| "a whole number (0 for no limit)")
}

pub fn positive_count(v: &str) -> Parsed<u32> {
    v.parse()
        .ok()
        .filter(|&n| n >= 1)
        .ok_or("a whole number of at least 1")
}

pub fn cors_origins(v: &str) -> Parsed<Option<CorsOrigins>> {
    CorsOrigins::parse(v).ok_or(
        "comma-separated origins such as https://app.example.com,http://localhost:3000 \
         (scheme, host and optional port; no path), or *",
    )
}

/// A user name for HTTP Basic: no `:` (it ends the name there).
pub fn user_name(v: &str) -> Parsed<Option<String>> {
    match v {
        "" => Ok(None),
        _ if v.contains(':') => Err("a user name without ':'"),
        _ => Ok(Some(v.to_string())),
    }
}

pub fn secret(v: &str) -> Parsed<Option<Secret>> {
    Ok((!v.is_empty()).then(|| Secret::new(v)))
}

pub fn file(v: &str) -> Parsed<Option<PathBuf>> {
    Ok((!v.is_empty()).then(|| PathBuf::from(v)))
}

/// `SKIFF_LOG`: a default level and `target=level` pairs, comma-separated
/// (`info`, `skiff=debug,warn`). tracing-subscriber's `Targets`, not its
/// `EnvFilter`: the same syntax for these, without the span and field
/// directives that brought a regex engine (~0.4 MB of binary) along.
///
/// Stricter than `Targets` itself, which takes a bare word for a target to
/// log at every level: `inf` or `verbose` would then switch every log line
/// off. Here a bare word must be a level, and a target is written
/// `target=level`.
pub fn parse_log_filter(text: &str) -> Option<Targets> {
    let directives: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return None;
    }
    let is_level = |l: &str| {
        ["trace", "debug", "info", "warn", "error", "off"]
            .iter()
            .any(|name| l.eq_ignore_ascii_case(name))
    };
    let is_target = |t: &str| {
        !t.is_empty()
            && t.split("::").all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            })
    };
    let valid = directives.iter().all(|d| match d.split_once('=') {
        Some((target, level)) => is_target(target.trim()) && is_level(level.trim()),
        None => is_level(d),
    });
    if !valid {
        return None;
    }
    directives.join(",").parse().ok()
}

/// Parses `250ms`, `3s`, `1.5s`, `2m`, `1h`, and sums of them such as
/// `1m30s` or `1h 15m`; a bare number is seconds. At most 100 years.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    // A bare number: seconds.
    let is_number = |t: &str| t.chars().all(|c| c.is_ascii_digit() || c == '.');
    let mut rest = text;
    let mut seconds = 0.0;
    let mut parts = 0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let seconds_per_unit = match unit {
            "" if parts == 0 && is_number(text) => 1.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        seconds += number * seconds_per_unit;
        parts += 1;
        rest = after.trim_start();
    }
    if parts == 0 {
        return None;
    }
    Duration::try_from_secs_f64(seconds)
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse_duration("3 s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 15m"), Some(Duration::from_secs(4500)));
        assert_eq!(parse_duration("2s500ms"), Some(Duration::from_millis(2500)));
        assert_eq!(
            parse_duration("876000h"),
            Some(Duration::from_secs(876_000 * 3600))
        );
        for bad in [
            "", "s", "3x", "-1s", "1.s", ".5s", "3 s s", "1e3s", "876001h", "1m30", "30 1m",
            "1m-30s", "7 7",
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
    fn log_filters_are_levels_and_target_level_pairs_only() {
        for good in [
            "info",
            "WARN",
            "off",
            "skiff=debug,warn",
            " info , skiff::access=off ",
            "tower_http=trace,error",
            "info,",
        ] {
            assert!(parse_log_filter(good).is_some(), "{good:?}");
        }
        // A bare word that is no level would be a target at every level,
        // leaving everything else off: a typo must not silence the logs.
        for bad in [
            "",
            " ",
            ",",
            "inf",
            "verbose",
            "skiff",
            "info,skiff",
            "skiff=loud",
            "=info",
            "skiff=",
            "a b=info",
            "[span]=info",
            "skiff[x]=debug",
            "::=info",
        ] {
            assert!(parse_log_filter(bad).is_none(), "{bad:?}");
        }
    }
}
