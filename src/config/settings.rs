//! One setting's value: the flag, else its environment variable, else the table's default, checked
//! and typed (milliseconds, counts, booleans, log level, listen addresses).
//!
//! Like Go, invalid integers in the environment (`BUILDER_TIMEOUT_MS=abc`) are silently ignored;
//! zero and negative values are ignored too, because a zero timeout has no meaning here. Unlike
//! Go, an empty environment variable counts as unset. `MIRROR_MODE` (newer upstream releases read
//! it, as they read `METRICS_ADDR`) takes Go's boolean spellings; any other value is an error
//! instead of a silent false: a mistyped `MIRROR_MODE=yes` would otherwise quietly change how
//! every request is answered.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::flags::{find, parse_go_bool, RawArgs};
use super::ConfigError;

/// Looks up an environment variable (tests pass a closure over a map).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Timeouts above a year are surely typos, and capping them keeps `Instant + timeout` far from
/// overflow everywhere else.
const MAX_MILLIS: u64 = 365 * 24 * 60 * 60 * 1000;

/// The raw flag values and the environment that gives their defaults.
pub(super) struct Settings<'a> {
    raw: RawArgs,
    env: Env<'a>,
}

/// Where a setting came from, for error messages.
enum Source {
    Flag,
    Env(&'static str),
    Default,
}

impl<'a> Settings<'a> {
    pub(super) fn new(raw: RawArgs, env: Env<'a>) -> Settings<'a> {
        Settings { raw, env }
    }

    /// The flag's value as given, without environment or default.
    pub(super) fn text(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        self.raw.text(name)
    }

    pub(super) fn path(&self, name: &str) -> Option<PathBuf> {
        self.raw.path(name)
    }

    pub(super) fn default(&self, name: &str) -> &'static str {
        find(self.raw.flags, name).map_or("", |flag| flag.default)
    }

    /// The flag's environment variable and its value, with empty counting as unset.
    fn env(&self, name: &str) -> Option<(&'static str, String)> {
        let var = find(self.raw.flags, name).map_or("", |flag| flag.env);
        let value = if var.is_empty() { None } else { (self.env)(var) };
        value.filter(|value| !value.is_empty()).map(|value| (var, value))
    }

    /// The flag, else its environment variable, else its default.
    fn string(&self, name: &str) -> Result<(String, Source), ConfigError> {
        if let Some(text) = self.text(name)? {
            return Ok((text.to_owned(), Source::Flag));
        }
        Ok(match self.env(name) {
            Some((var, text)) => (text, Source::Env(var)),
            None => (self.default(name).to_owned(), Source::Default),
        })
    }

    /// A boolean: the flag, else its environment variable read as Go's `strconv.ParseBool` reads
    /// it, else false.
    pub(super) fn boolean(&self, name: &str) -> Result<bool, ConfigError> {
        let (text, source) = self.string(name)?;
        parse_go_bool(&text).ok_or_else(|| {
            err!(
                "bad value {text:?} in {}: use true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)",
                describe(name, &source)
            )
        })
    }

    /// A number: the flag (an error if `parse` refuses it), else its environment variable (ignored
    /// if `parse` refuses it, as Go's `getEnvInt` ignores what `strconv.Atoi` rejects), else its
    /// default, else `None`.
    pub(super) fn number<T>(&self, name: &str, parse: Parse<T>) -> Result<Option<T>, ConfigError> {
        if let Some(text) = self.text(name)? {
            return parse(name, text).map(Some);
        }
        if let Some(value) = self.env(name).and_then(|(_, text)| parse(name, text.trim()).ok()) {
            return Ok(Some(value));
        }
        match self.default(name) {
            "" => Ok(None),
            default => parse(name, default).map(Some),
        }
    }

    /// A duration in milliseconds, for a flag that has a default.
    pub(super) fn millis(&self, name: &str) -> Result<Duration, ConfigError> {
        self.number(name, parse_millis)?.map_or_else(|| parse_millis(name, ""), Ok)
    }

    /// A positive count, for a flag that has a default.
    pub(super) fn count(&self, name: &str) -> Result<usize, ConfigError> {
        self.number(name, parse_count)?.map_or_else(|| parse_count(name, ""), Ok)
    }

    /// A listen address as written and resolved; `None` when the flag is unset and has no default.
    pub(super) fn listen(&self, name: &str) -> Result<Option<(String, SocketAddr)>, ConfigError> {
        match self.string(name)? {
            (text, Source::Default) if text.is_empty() => Ok(None),
            (text, source) => {
                let addr = resolve_listen(&text, &describe(name, &source))?;
                Ok(Some((text, addr)))
            }
        }
    }

    /// `--loglevel` and `--json`.
    pub(super) fn log(&self) -> Result<(log::LevelFilter, bool), ConfigError> {
        let (text, source) = self.string("loglevel")?;
        let level = parse_log_level(&text).ok_or_else(|| {
            err!(
                "bad log level {text:?} in {}: use trace, debug, info, warn, warning, error, fatal, panic or off",
                describe("loglevel", &source)
            )
        })?;
        // As in Go, any non-empty LOG_JSON turns JSON logging on, even "false".
        let json = self.raw.boolean("json").unwrap_or_else(|| self.env("json").is_some());
        Ok((level, json))
    }
}

fn describe(name: &str, source: &Source) -> String {
    match source {
        Source::Flag | Source::Default => format!("--{name}"),
        Source::Env(var) => format!("{var} (the default of --{name})"),
    }
}

/// Parses a flag's text; the flag's name is for the error.
pub(super) type Parse<T> = fn(&str, &str) -> Result<T, ConfigError>;

pub(super) fn parse_millis(name: &str, text: &str) -> Result<Duration, ConfigError> {
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 && ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(err!(
            "--{name}: expected a whole number of milliseconds from 1 to {MAX_MILLIS}, got {text:?}"
        )),
    }
}

fn parse_count(name: &str, text: &str) -> Result<usize, ConfigError> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(err!("--{name}: expected a positive whole number, got {text:?}")),
    }
}

/// logrus's level names, case-insensitive, plus `off`. An empty level means the default, as
/// Go's proxy skips setting the level then.
fn parse_log_level(text: &str) -> Option<log::LevelFilter> {
    use log::LevelFilter;
    Some(match text.to_ascii_lowercase().as_str() {
        "trace" => LevelFilter::Trace,
        "debug" => LevelFilter::Debug,
        "" | "info" => LevelFilter::Info,
        "warn" | "warning" => LevelFilter::Warn,
        // The log crate has nothing above error; fatal and panic keep only errors.
        "error" | "fatal" | "panic" => LevelFilter::Error,
        "off" => LevelFilter::Off,
        _ => return None,
    })
}

/// Resolves a listen address, preferring the first IPv4 address, because Go's `localhost:25590`
/// listens on 127.0.0.1. `:PORT` means every interface, as in Go; we pick 0.0.0.0 for it, in
/// keeping with the IPv4 preference.
fn resolve_listen(text: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: &str| err!("bad address {text:?} for {what}: {why}");
    if text.is_empty() {
        return Err(bad("empty"));
    }
    // Checked before resolving, so that such a typo never reaches DNS.
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    let query = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    let addrs: Vec<SocketAddr> =
        query.to_socket_addrs().map_err(|e| bad(&format!("{e} (expected HOST:PORT)")))?.collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("it resolved to no address"))
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::*;

    const ENV: &[(&str, &str)] = &[
        ("PROXY_LISTEN_ADDR", "127.0.0.1:0"),
        ("BUILDER_TIMEOUT_MS", "3000"),
        ("LOG_LEVEL", "warning"),
        ("LOG_JSON", "1"),
        ("BEACON_EXPIRY_MS", "24000"),
    ];

    /// `-builders BUILDER` and nothing else, with `env` as the environment.
    #[track_caller]
    fn from_env(env: &[(&str, &str)]) -> Config {
        run_env(&with_builder(&[]), env)
    }

    #[test]
    fn environment_gives_defaults_and_flags_override_it() {
        use log::LevelFilter::{Error, Warn};
        let ms = Duration::from_millis;
        let got = |c: &Config| {
            (c.listen, c.request_timeout, c.proxy_request_timeout, c.log_level, c.log_json, c.beacon_expiry)
        };
        // Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS as well.
        let config = from_env(ENV);
        assert_eq!(got(&config), (loopback(0), Some(ms(3000)), ms(3000), Warn, true, ms(24_000)));
        assert_eq!(config.listen_text, "127.0.0.1:0");
        let flags =
            ["-addr=127.0.0.1:1", "-request-timeout=100", "-proxy-request-timeout=200", "-loglevel=error"];
        let config =
            run_env(&[&with_builder(&flags)[..], &["-json=false", "-beacon-expiry=300"]].concat(), ENV);
        assert_eq!(got(&config), (loopback(1), Some(ms(100)), ms(200), Error, false, ms(300)));
    }

    #[test]
    fn invalid_environment_numbers_are_ignored_as_in_go() {
        for bad in ["abc", "0", "-5", "1.5", ""] {
            let config = from_env(&[("BUILDER_TIMEOUT_MS", bad), ("BEACON_EXPIRY_MS", bad)]);
            assert_eq!(config.request_timeout, None, "{bad:?}");
            assert_eq!(config.proxy_request_timeout, Duration::from_millis(2000));
            assert_eq!(config.beacon_expiry, Duration::from_millis(12_000));
        }
    }

    #[test]
    fn mirror_mode_and_metrics_addr_come_from_the_environment_as_upstream_reads_them() {
        let truthy = ["1", "t", "T", "true", "TRUE", "True"];
        let falsy = ["0", "f", "F", "false", "FALSE", "False", ""];
        for (value, expected) in truthy.iter().map(|v| (v, true)).chain(falsy.iter().map(|v| (v, false))) {
            assert_eq!(from_env(&[("MIRROR_MODE", value)]).mirror_mode, expected, "{value:?}");
        }
        let metrics = |env| from_env(&[("METRICS_ADDR", env)]).metrics_addr;
        assert_eq!((metrics("127.0.0.1:9551"), metrics("")), (Some(loopback(9551)), None));
        // Flags override the variables, which makes a bad value harmless, as for every variable.
        let env = [("MIRROR_MODE", "true"), ("METRICS_ADDR", "127.0.0.1:9551")];
        let config =
            run_env(&with_builder(&["-mirror-mode=false", "--metrics-addr", "127.0.0.1:9552"]), &env);
        assert_eq!((config.mirror_mode, config.metrics_addr), (false, Some(loopback(9552))));
        assert!(run_env(&with_builder(&["--mirror-mode"]), &[("MIRROR_MODE", "false")]).mirror_mode);
        assert!(!run_env(&with_builder(&["-mirror-mode=false"]), &[("MIRROR_MODE", "yes")]).mirror_mode);
    }

    #[test]
    fn log_json_is_on_for_any_non_empty_value_as_in_go() {
        for (value, expected) in [("true", true), ("false", true), ("x", true), ("", false)] {
            assert_eq!(from_env(&[("LOG_JSON", value)]).log_json, expected, "{value:?}");
        }
    }

    #[test]
    fn empty_environment_strings_count_as_unset() {
        let config = from_env(&[("PROXY_LISTEN_ADDR", ""), ("LOG_LEVEL", "")]);
        assert_eq!(
            (config.listen_text.as_str(), config.log_level),
            ("localhost:25590", log::LevelFilter::Info)
        );
    }

    #[test]
    fn log_levels() {
        use log::LevelFilter::*;
        let names =
            ["trace", "debug", "info", "INFO", "", "warn", "warning", "error", "fatal", "panic", "off"];
        for (text, expected) in
            names.into_iter().zip([Trace, Debug, Info, Info, Info, Warn, Warn, Error, Error, Error, Off])
        {
            assert_eq!(run(&with_builder(&[&format!("--loglevel={text}")])).log_level, expected, "{text:?}");
        }
        // A flag makes a bad LOG_LEVEL irrelevant, as in Go.
        let config = run_env(&with_builder(&["-loglevel=debug"]), &[("LOG_LEVEL", "loud")]);
        assert_eq!(config.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn bad_values_in_the_environment_name_their_variable() {
        let rows: &[(&str, &str, &[&str])] = &[
            ("LOG_LEVEL", "loud", &["bad log level", "LOG_LEVEL"]),
            ("METRICS_ADDR", "nowhere", &["METRICS_ADDR", "--metrics-addr", "nowhere"]),
            ("PROXY_LISTEN_ADDR", "127.0.0.1", &["bad address", "PROXY_LISTEN_ADDR"]),
            ("MIRROR_MODE", "yes", &["MIRROR_MODE", "--mirror-mode", "true or false"]),
            ("MIRROR_MODE", "on", &["MIRROR_MODE", "--mirror-mode", "true or false"]),
            ("MIRROR_MODE", " true", &["MIRROR_MODE", "--mirror-mode", "true or false"]),
            ("MIRROR_MODE", "2", &["MIRROR_MODE", "--mirror-mode", "true or false"]),
        ];
        for (var, value, needles) in rows {
            assert_mentions(&error_env(&with_builder(&[]), &[(var, value)]), needles);
        }
    }

    #[test]
    fn bad_flag_values_are_named() {
        assert_errors(&[(&["--loglevel", "loud"], &["bad log level", "\"loud\"", "--loglevel"])]);
        let millis =
            ["request-timeout", "proxy-request-timeout", "idle-timeout", "read-timeout", "write-timeout"];
        let counts = ["max-body-bytes", "max-connections", "backlog-requests", "backlog-bytes"];
        for flag in millis.iter().chain(&["beacon-expiry"]).chain(&counts) {
            for bad in ["0", "abc", "-1", "1.5", "", "1e3", "99999999999999999999999"] {
                let message = error(&with_builder(&[&format!("--{flag}={bad}")]));
                assert_mentions(&message, &[&format!("--{flag}"), &format!("{bad:?}")]);
            }
        }
        assert_errors(&[(&["--idle-timeout=31536000001"], &["--idle-timeout", "31536000001"])]);
        for bad in ["", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "::1:0", "a b:1"] {
            assert_mentions(
                &error(&with_builder(&["-addr", bad])),
                &["bad address", &format!("{bad:?}"), "--addr"],
            );
            assert_mentions(
                &error(&with_builder(&["-metrics-addr", bad])),
                &["bad address", "--metrics-addr"],
            );
        }
    }

    #[test]
    fn listen_addresses() {
        let table: &[(&str, SocketAddr)] = &[
            ("127.0.0.1:0", loopback(0)),
            ("localhost:0", loopback(0)),
            (":0", "0.0.0.0:0".parse().unwrap()),
            ("[::1]:0", "[::1]:0".parse().unwrap()),
            ("0.0.0.0:25590", "0.0.0.0:25590".parse().unwrap()),
        ];
        for (text, expected) in table {
            let config = run(&with_builder(&["-addr", text]));
            assert_eq!((config.listen, config.listen_text.as_str()), (*expected, *text), "{text}");
        }
    }
}
