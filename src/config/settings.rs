//! One setting's value: the flag, else its environment variable, else the table's default, checked
//! and typed (milliseconds, counts, booleans, log level, listen addresses).
//!
//! Like Go, invalid integers in the environment (`BUILDER_TIMEOUT_MS=abc`) are silently ignored;
//! zero and negative values are ignored too, because a zero timeout has no meaning here. Unlike
//! Go, an empty environment variable counts as unset. `MIRROR_MODE` takes Go's boolean
//! spellings; any other value is an error instead of a silent false.

use super::*;

/// Timeouts above a year are surely typos, and capping them keeps `Instant + timeout` far from
/// overflow everywhere else.
pub(super) const MAX_MILLIS: u64 = 365 * 24 * 60 * 60 * 1000;

/// An environment variable's value, with empty counting as unset.
pub(super) fn env_text(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    if var.is_empty() {
        return None;
    }
    env(var).filter(|value| !value.is_empty())
}

/// A millisecond count from the environment; anything but a positive integer is ignored, as Go's
/// `getEnvInt` ignores what `strconv.Atoi` rejects.
pub(super) fn env_millis(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<Duration> {
    env_text(env, var)
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0 && ms <= MAX_MILLIS)
        .map(Duration::from_millis)
}

/// A boolean setting: the flag, else its environment variable read as Go's `strconv.ParseBool`
/// reads it (`1`, `t`, `true`, `TRUE`, `True`, and the same for false), else false. Any other
/// value in the variable is a configuration error rather than silently false: a mistyped
/// `MIRROR_MODE=yes` would otherwise quietly change how every request is answered.
pub(super) fn bool_setting(
    raw: &RawArgs,
    flags: &[Flag],
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<bool, ConfigError> {
    if let Some(value) = raw.boolean(name) {
        return Ok(value);
    }
    let var = env_of(flags, name);
    match env_text(env, var) {
        None => Ok(false),
        Some(text) => parse_go_bool(&text).ok_or_else(|| {
            ConfigError(format!(
                "bad value {text:?} in {var} (the default of --{name}): use true or false \
                 (also 1, t, T, TRUE, True, 0, f, F, FALSE, False)"
            ))
        }),
    }
}

/// Where a string setting came from, for error messages.
pub(super) enum Source {
    Flag,
    Env(&'static str),
    Default,
}

/// A string setting: the flag, else its environment variable, else its default.
pub(super) fn string_setting(
    raw: &RawArgs,
    flags: &[Flag],
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Source), ConfigError> {
    if let Some(text) = raw.text(name)? {
        return Ok((text.to_owned(), Source::Flag));
    }
    let var = env_of(flags, name);
    if let Some(text) = env_text(env, var) {
        return Ok((text, Source::Env(var)));
    }
    Ok((default_of(flags, name).to_owned(), Source::Default))
}

pub(super) fn describe(name: &str, source: &Source) -> String {
    match source {
        Source::Flag | Source::Default => format!("--{name}"),
        Source::Env(var) => format!("{var} (the default of --{name})"),
    }
}

pub(super) fn listen_setting(
    raw: &RawArgs,
    flags: &[Flag],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, SocketAddr), ConfigError> {
    let (text, source) = string_setting(raw, flags, "addr", env)?;
    let listen = resolve_listen(&text, &describe("addr", &source))?;
    Ok((text, listen))
}

pub(super) fn log_settings(
    raw: &RawArgs,
    flags: &[Flag],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(log::LevelFilter, bool), ConfigError> {
    let (text, source) = string_setting(raw, flags, "loglevel", env)?;
    let level = parse_log_level(&text).ok_or_else(|| {
        ConfigError(format!(
            "bad log level {text:?} in {}: use trace, debug, info, warn, warning, error, \
             fatal, panic or off",
            describe("loglevel", &source)
        ))
    })?;
    let json = match raw.boolean("json") {
        Some(json) => json,
        // As in Go, any non-empty LOG_JSON turns JSON logging on, even "false".
        None => env_text(env, env_of(flags, "json")).is_some(),
    };
    Ok((level, json))
}

/// logrus's level names, case-insensitive, plus `off`. An empty level means the default, as
/// Go's proxy skips setting the level then.
pub(super) fn parse_log_level(text: &str) -> Option<log::LevelFilter> {
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

pub(super) fn parse_millis(name: &str, text: &str) -> Result<Duration, ConfigError> {
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 && ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError(format!(
            "--{name}: expected a whole number of milliseconds from 1 to {MAX_MILLIS}, \
             got {text:?}"
        ))),
    }
}

pub(super) fn parse_count(name: &str, text: &str) -> Result<usize, ConfigError> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError(format!("--{name}: expected a positive whole number, got {text:?}"))),
    }
}

pub(super) fn millis_setting(raw: &RawArgs, name: &str) -> Result<Duration, ConfigError> {
    let text = raw.text(name)?.unwrap_or(default_of(PROXY_FLAGS, name));
    parse_millis(name, text)
}

pub(super) fn count_setting(raw: &RawArgs, name: &str) -> Result<usize, ConfigError> {
    let text = raw.text(name)?.unwrap_or(default_of(PROXY_FLAGS, name));
    parse_count(name, text)
}

/// Resolves a listen address, preferring the first IPv4 address. `:PORT` means every interface,
/// as in Go; we pick 0.0.0.0 for it, in keeping with the IPv4 preference.
pub(super) fn resolve_listen(text: &str, what: &str) -> Result<SocketAddr, ConfigError> {
    let bad = |why: String| ConfigError(format!("bad address {text:?} for {what}: {why}"));
    if text.is_empty() {
        return Err(bad("empty".to_owned()));
    }
    // Checked before resolving, so that such a typo never reaches DNS.
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters".to_owned()));
    }
    let query = if text.starts_with(':') { format!("0.0.0.0{text}") } else { text.to_owned() };
    let addrs: Vec<SocketAddr> =
        query.to_socket_addrs().map_err(|e| bad(format!("{e} (expected HOST:PORT)")))?.collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| bad("it resolved to no address".to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::*;

    #[test]
    fn environment_gives_defaults() {
        let env = env_map(&[
            ("PROXY_LISTEN_ADDR", "127.0.0.1:0"),
            ("BUILDER_TIMEOUT_MS", "3000"),
            ("LOG_LEVEL", "warning"),
            ("LOG_JSON", "1"),
            ("BEACON_EXPIRY_MS", "24000"),
        ]);
        let config = run_with(&["--builders", BUILDER], &env);
        assert_eq!(config.listen, loopback(0));
        assert_eq!(config.listen_text, "127.0.0.1:0");
        assert_eq!(config.request_timeout, Some(Duration::from_millis(3000)));
        // Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS as well.
        assert_eq!(config.proxy_request_timeout, Duration::from_millis(3000));
        assert_eq!(config.log_level, log::LevelFilter::Warn);
        assert!(config.log_json);
        assert_eq!(config.beacon_expiry, Duration::from_millis(24_000));
    }

    #[test]
    fn flags_override_the_environment() {
        let env = env_map(&[
            ("PROXY_LISTEN_ADDR", "127.0.0.1:1"),
            ("BUILDER_TIMEOUT_MS", "3000"),
            ("LOG_LEVEL", "warning"),
            ("LOG_JSON", "1"),
            ("BEACON_EXPIRY_MS", "24000"),
        ]);
        let config = run_with(
            &[
                "--builders",
                BUILDER,
                "-addr=127.0.0.1:0",
                "-request-timeout=100",
                "-proxy-request-timeout=200",
                "-loglevel=error",
                "-json=false",
                "-beacon-expiry=300",
            ],
            &env,
        );
        assert_eq!(config.listen, loopback(0));
        assert_eq!(config.request_timeout, Some(Duration::from_millis(100)));
        assert_eq!(config.proxy_request_timeout, Duration::from_millis(200));
        assert_eq!(config.log_level, log::LevelFilter::Error);
        assert!(!config.log_json);
        assert_eq!(config.beacon_expiry, Duration::from_millis(300));
    }

    #[test]
    fn invalid_environment_numbers_are_ignored_as_in_go() {
        for bad in ["abc", "0", "-5", "1.5", ""] {
            let env = env_map(&[("BUILDER_TIMEOUT_MS", bad), ("BEACON_EXPIRY_MS", bad)]);
            let config = run_with(&["--builders", BUILDER], &env);
            assert_eq!(config.request_timeout, None, "{bad:?}");
            assert_eq!(config.proxy_request_timeout, Duration::from_millis(2000));
            assert_eq!(config.beacon_expiry, Duration::from_millis(12_000));
        }
    }

    #[test]
    fn mirror_mode_and_metrics_addr_come_from_the_environment_as_upstream_reads_them() {
        let truthy = ["1", "t", "T", "true", "TRUE", "True"];
        let falsy = ["0", "f", "F", "false", "FALSE", "False", ""];
        for (values, expected) in [(&truthy[..], true), (&falsy[..], false)] {
            for value in values {
                let env = env_map(&[("MIRROR_MODE", value)]);
                assert_eq!(run_with(&["--builders", BUILDER], &env).mirror_mode, expected, "{value:?}");
            }
        }
        let env = env_map(&[("METRICS_ADDR", "127.0.0.1:9551")]);
        assert_eq!(run_with(&["--builders", BUILDER], &env).metrics_addr, Some(loopback(9551)));
        let env = env_map(&[("METRICS_ADDR", "")]);
        assert_eq!(run_with(&["--builders", BUILDER], &env).metrics_addr, None);
    }

    #[test]
    fn flags_override_mirror_mode_and_metrics_addr_from_the_environment() {
        let env = env_map(&[("MIRROR_MODE", "true"), ("METRICS_ADDR", "127.0.0.1:9551")]);
        let config = run_with(
            &["--builders", BUILDER, "-mirror-mode=false", "--metrics-addr", "127.0.0.1:9552"],
            &env,
        );
        assert!(!config.mirror_mode);
        assert_eq!(config.metrics_addr, Some(loopback(9552)));
        let env = env_map(&[("MIRROR_MODE", "false")]);
        assert!(run_with(&["--builders", BUILDER, "--mirror-mode"], &env).mirror_mode);
    }

    #[test]
    fn bad_mirror_mode_or_metrics_addr_in_the_environment_is_an_error_naming_the_variable() {
        for value in ["yes", "on", " true", "2"] {
            let message = error_with(&["--builders", BUILDER], &env_map(&[("MIRROR_MODE", value)]));
            assert_mentions(&message, &["MIRROR_MODE", "--mirror-mode", "true or false"]);
        }
        let message = error_with(&["--builders", BUILDER], &env_map(&[("METRICS_ADDR", "nowhere")]));
        assert_mentions(&message, &["METRICS_ADDR", "--metrics-addr", "nowhere"]);
        // A flag that overrides the variable makes its bad value harmless, as for every variable.
        let env = env_map(&[("MIRROR_MODE", "yes")]);
        assert!(!run_with(&["--builders", BUILDER, "-mirror-mode=false"], &env).mirror_mode);
    }

    #[test]
    fn log_json_is_on_for_any_non_empty_value_as_in_go() {
        for (value, expected) in [("true", true), ("false", true), ("x", true), ("", false)] {
            let env = env_map(&[("LOG_JSON", value)]);
            assert_eq!(run_with(&["--builders", BUILDER], &env).log_json, expected, "{value:?}");
        }
    }

    #[test]
    fn empty_environment_strings_count_as_unset() {
        let env = env_map(&[("PROXY_LISTEN_ADDR", ""), ("LOG_LEVEL", "")]);
        let config = run_with(&["--builders", BUILDER], &env);
        assert_eq!(config.listen_text, "localhost:25590");
        assert_eq!(config.log_level, log::LevelFilter::Info);
    }

    #[test]
    fn log_levels() {
        use log::LevelFilter::*;
        let table = [
            ("trace", Trace),
            ("debug", Debug),
            ("info", Info),
            ("INFO", Info),
            ("", Info),
            ("warn", Warn),
            ("warning", Warn),
            ("error", Error),
            ("fatal", Error),
            ("panic", Error),
            ("off", Off),
        ];
        for (text, expected) in table {
            let arg = format!("--loglevel={text}");
            assert_eq!(run(&["--builders", BUILDER, &arg]).log_level, expected, "{text:?}");
        }
    }

    #[test]
    fn bad_log_level_names_its_source() {
        let message = error(&["--builders", BUILDER, "--loglevel", "loud"]);
        assert_mentions(&message, &["bad log level", "\"loud\"", "--loglevel"]);

        let env = env_map(&[("LOG_LEVEL", "loud")]);
        let message = error_with(&["--builders", BUILDER], &env);
        assert_mentions(&message, &["bad log level", "LOG_LEVEL"]);

        // A flag makes a bad LOG_LEVEL irrelevant, as in Go.
        let config = run_with(&["--builders", BUILDER, "-loglevel=debug"], &env);
        assert_eq!(config.log_level, log::LevelFilter::Debug);
    }

    #[test]
    fn bad_timeouts_and_counts() {
        let millis = [
            "request-timeout",
            "proxy-request-timeout",
            "idle-timeout",
            "read-timeout",
            "write-timeout",
            "beacon-expiry",
        ];
        let counts = ["max-body-bytes", "max-connections", "backlog-requests", "backlog-bytes"];
        for flag in millis.iter().chain(counts.iter()) {
            for bad in ["0", "abc", "-1", "1.5", "", "1e3", "99999999999999999999999"] {
                let arg = format!("--{flag}={bad}");
                let message = error(&["-builders", BUILDER, &arg]);
                assert_mentions(&message, &[&format!("--{flag}"), &format!("{bad:?}")]);
            }
        }
        let message = error(&["-builders", BUILDER, "--idle-timeout=31536000001"]);
        assert_mentions(&message, &["--idle-timeout", "31536000001"]);
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
            let config = run(&["-builders", BUILDER, "-addr", text]);
            assert_eq!(config.listen, *expected, "{text}");
            assert_eq!(config.listen_text, *text);
        }
    }

    #[test]
    fn bad_listen_addresses() {
        for bad in ["", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "::1:0", "a b:1"] {
            let message = error(&["-builders", BUILDER, "-addr", bad]);
            assert_mentions(&message, &["bad address", &format!("{bad:?}"), "--addr"]);
            let message = error(&["-builders", BUILDER, "-metrics-addr", bad]);
            assert_mentions(&message, &["bad address", "--metrics-addr"]);
        }
        let env = env_map(&[("PROXY_LISTEN_ADDR", "127.0.0.1")]);
        let message = error_with(&["-builders", BUILDER], &env);
        assert_mentions(&message, &["bad address", "PROXY_LISTEN_ADDR"]);
    }
}
