//! Validation: one lookup order for every flag (the flag as given, else its environment variable,
//! else its default from the table), typed by a parser per kind of value (durations, counts,
//! booleans, log levels, listen addresses, choices), with every refusal worded in one place.
//!
//! Environment variables follow the Go proxy: an empty one counts as unset, and a number it
//! refuses is ignored (as Go's `getEnvInt` ignores what `strconv.Atoi` rejects). `MIRROR_MODE`
//! (newer upstream releases read it, as they read `METRICS_ADDR`) takes Go's boolean spellings;
//! any other value is an error instead of a silent false: a mistyped `MIRROR_MODE=yes` would
//! otherwise quietly change how every request is answered. Knows no files or endpoints.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use super::flags::{find, Flag, Given};
use super::ConfigError;

/// Looks up an environment variable (tests pass a closure over a map).
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Timeouts above a year are surely typos, and capping them keeps `Instant + timeout` far from
/// overflow everywhere else.
const MAX_MILLIS: u64 = 365 * 24 * 60 * 60 * 1000;

/// The flags as given, their table and the environment that gives their defaults.
pub(super) struct Settings<'a> {
    pub(super) flags: &'static [Flag],
    pub(super) given: Given,
    pub(super) env: Env<'a>,
}

impl Settings<'_> {
    /// The flag's value, typed by `parse`: the flag as given, else its environment variable,
    /// else its default; `None` when none of them is set. An error names the flag (or the
    /// variable) and the refused text.
    pub(super) fn get<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let flag = find(self.flags, name).ok_or_else(|| err!("--{name}: no such flag"))?;
        let invalid = |place: String, text: &str, why| Err(err!("{place}: invalid value {text:?}: {why}"));
        if let Some(value) = self.given.get(name) {
            let text =
                value.to_str().ok_or_else(|| err!("--{name}: the value is not valid UTF-8: {value:?}"))?;
            return parse(text).map(Some).or_else(|why| invalid(format!("--{name}"), text, why));
        }
        if let Some(text) = self.env(flag) {
            let numeric = matches!(flag.value, Some("MS" | "N" | "BYTES"));
            match parse(if numeric { text.trim() } else { &text }) {
                Ok(value) => return Ok(Some(value)),
                Err(_) if numeric => {}
                Err(why) => return invalid(format!("{} (the default of --{name})", flag.env), &text, why),
            }
        }
        match flag.default {
            "" => Ok(None),
            text => parse(text).map(Some).or_else(|why| invalid(format!("--{name}"), text, why)),
        }
    }

    /// [`Settings::get`] for a flag that has a default, so always has a value.
    pub(super) fn value<T>(
        &self,
        name: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.get(name, parse)?.ok_or_else(|| err!("--{name}: no value"))
    }

    /// A text flag; empty means unset.
    pub(super) fn text(&self, name: &str) -> Result<Option<String>, ConfigError> {
        Ok(self.get(name, |text| Ok(text.to_owned()))?.filter(|text| !text.is_empty()))
    }

    /// A file flag, as given (a path need not be UTF-8), else its default.
    pub(super) fn path(&self, name: &str) -> Option<PathBuf> {
        let default = find(self.flags, name).map_or("", |flag| flag.default);
        self.given.get(name).map(PathBuf::from).or_else(|| (!default.is_empty()).then(|| default.into()))
    }

    /// The flag's environment variable, if it has one and it is not empty.
    fn env(&self, flag: &Flag) -> Option<String> {
        (!flag.env.is_empty()).then(|| (self.env)(flag.env)).flatten().filter(|text| !text.is_empty())
    }

    /// `--loglevel` and `--json`, which both binaries take.
    pub(super) fn log(&self) -> Result<(log::LevelFilter, bool), ConfigError> {
        let level = self.value("loglevel", parse_log_level)?;
        // As in Go, any non-empty LOG_JSON turns JSON logging on, even "false".
        let json = match self.given.get("json") {
            Some(value) => value == "true",
            None => find(self.flags, "json").and_then(|flag| self.env(flag)).is_some(),
        };
        Ok((level, json))
    }
}

pub(super) fn parse_millis(text: &str) -> Result<Duration, String> {
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 && ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(format!("expected a whole number of milliseconds from 1 to {MAX_MILLIS}")),
    }
}

pub(super) fn parse_count(text: &str) -> Result<usize, String> {
    text.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(|| "expected a positive whole number".into())
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn parse_bool(text: &str) -> Result<bool, String> {
    parse_go_bool(text)
        .ok_or_else(|| "use true or false (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)".into())
}

/// The value of `choices` that `text` names exactly.
pub(super) fn one_of<T: Copy>(choices: &[(&str, T)], text: &str) -> Result<T, String> {
    let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
    choices
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, value)| *value)
        .ok_or_else(|| format!("use {}", names.join(" or ")))
}

/// logrus's level names, case-insensitive, plus `off`. An empty level means the default, as
/// Go's proxy skips setting the level then.
fn parse_log_level(text: &str) -> Result<log::LevelFilter, String> {
    use log::LevelFilter::*;
    Ok(match text.to_ascii_lowercase().as_str() {
        "trace" => Trace,
        "debug" => Debug,
        "" | "info" => Info,
        "warn" | "warning" => Warn,
        // The log crate has nothing above error; fatal and panic keep only errors.
        "error" | "fatal" | "panic" => Error,
        "off" => Off,
        _ => {
            return Err(
                "not a log level: use trace, debug, info, warn, warning, error, fatal, panic or off".into()
            )
        }
    })
}

/// A listen address as written and resolved, preferring the first IPv4 address, because Go's
/// `localhost:25590` listens on 127.0.0.1. `:PORT` means every interface, as in Go; we pick
/// 0.0.0.0 for it, in keeping with the IPv4 preference.
pub(super) fn parse_listen(text: &str) -> Result<(String, SocketAddr), String> {
    let bad = |why: &str| format!("not an address to listen on: {why}");
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
    let addr = addrs.iter().find(|addr| addr.is_ipv4()).or(addrs.first()).copied();
    addr.map(|addr| (text.to_owned(), addr)).ok_or_else(|| bad("it resolved to no address"))
}
