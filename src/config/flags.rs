//! The flag tables of both binaries, `lexopt` parsing into raw flag values ([`RawArgs`]), and
//! `--help`. One table per binary is the single source for which flags exist, which take a value,
//! their defaults, their environment variables and their help, so the four cannot drift apart.
//!
//! Go compatibility: every flag works as `-flag` and `--flag`, with its value as the next
//! argument or after `=`; booleans follow Go's `flag` package (`-json`, `-json=true`,
//! `-json=false`, but never `-json false`). Knows no environment, files or DNS.

use super::*;

/// One flag: the single source for parsing (which flags exist and which take a value), for
/// defaults, and for the help text, so the three cannot drift apart.
pub(super) struct Flag {
    name: &'static str,
    /// Placeholder shown in the help; `None` marks a boolean flag.
    value: Option<&'static str>,
    /// The default as a flag value would spell it; empty when there is none.
    default: &'static str,
    /// The environment variable that supplies the default; empty when there is none.
    env: &'static str,
    help: &'static str,
}

impl Flag {
    pub(super) fn takes_value(&self) -> bool {
        self.value.is_some()
    }
}

/// The logging flags both binaries take.
pub(super) const LOGLEVEL_FLAG: Flag = Flag {
    name: "loglevel",
    value: Some("LEVEL"),
    default: "info",
    env: "LOG_LEVEL",
    help: "trace, debug, info, warn (or warning), error (fatal and panic mean error), off",
};
pub(super) const JSON_FLAG: Flag = Flag {
    name: "json",
    value: None,
    default: "false",
    env: "LOG_JSON",
    help: "log JSON lines instead of text (any non-empty LOG_JSON turns it on)",
};

pub(super) const PROXY_FLAGS: &[Flag] = &[
    Flag {
        name: "addr",
        value: Some("HOST:PORT"),
        default: "localhost:25590",
        env: "PROXY_LISTEN_ADDR",
        help: "address the beacon nodes connect to (\":PORT\" means every interface)",
    },
    Flag {
        name: "builders",
        value: Some("URL[,URL...]"),
        default: "",
        env: "",
        help: "execution clients, comma-separated, as host:port or http://host:port/path; \
               required; the first is the primary, whose answers go back to the beacon node",
    },
    Flag {
        name: "builders-file",
        value: Some("FILE"),
        default: "",
        env: "",
        help: "execution clients, one per line (as in --builders; blank lines and # comments \
               allowed), instead of --builders; read again on SIGHUP",
    },
    Flag {
        name: "proxies",
        value: Some("URL[,URL...]"),
        default: "",
        env: "",
        help: "other sync-proxies that get a copy of every beacon node request",
    },
    Flag {
        name: "request-timeout",
        value: Some("MS"),
        default: "",
        env: "BUILDER_TIMEOUT_MS",
        help: "one timeout for every request to a builder; without it each Engine API method \
               gets its own timeout from the spec",
    },
    Flag {
        name: "proxy-request-timeout",
        value: Some("MS"),
        default: "2000",
        env: "BUILDER_TIMEOUT_MS",
        help: "timeout for requests to --proxies",
    },
    LOGLEVEL_FLAG,
    JSON_FLAG,
    Flag {
        name: "mirror-mode",
        value: None,
        default: "false",
        env: "MIRROR_MODE",
        help: "acknowledge every request at once instead of waiting for the primary \
               (for an nginx mirror); MIRROR_MODE takes true or false as Go spells them",
    },
    Flag {
        name: "max-body-bytes",
        value: Some("BYTES"),
        default: "134217728",
        env: "",
        help: "largest request or answer body accepted",
    },
    Flag {
        name: "max-connections",
        value: Some("N"),
        default: "1024",
        env: "",
        help: "most beacon node connections open at once",
    },
    Flag {
        name: "idle-timeout",
        value: Some("MS"),
        default: "60000",
        env: "",
        help: "close a keep-alive connection idle this long",
    },
    Flag {
        name: "read-timeout",
        value: Some("MS"),
        default: "30000",
        env: "",
        help: "a request must arrive whole within this of its first byte",
    },
    Flag {
        name: "write-timeout",
        value: Some("MS"),
        default: "10000",
        env: "",
        help: "close a connection that takes no byte of the answers it is owed for this long",
    },
    Flag {
        name: "backlog-requests",
        value: Some("N"),
        default: "512",
        env: "",
        help: "most ordered requests queued for one execution client",
    },
    Flag {
        name: "backlog-bytes",
        value: Some("BYTES"),
        default: "268435456",
        env: "",
        help: "most bytes of ordered requests queued for one execution client",
    },
    Flag {
        name: "beacon-expiry",
        value: Some("MS"),
        default: "12000",
        env: "BEACON_EXPIRY_MS",
        help: "forget the best beacon node after this long without a request from it",
    },
    Flag {
        name: "jwt-secret",
        value: Some("FILE"),
        default: "",
        env: "",
        help: "file with the 32-byte hex JWT secret the beacon nodes sign with; every POST must then carry a valid token; \
               read again on SIGHUP",
    },
    Flag {
        name: "builder-jwt-secrets",
        value: Some("FILE"),
        default: "",
        env: "",
        help: "JSON file mapping a builder (as written in --builders, or its URL) to its own \
               hex JWT secret; read again on SIGHUP",
    },
    Flag {
        name: "jwt-client-id",
        value: Some("ID"),
        default: "",
        env: "",
        help: "the JWT \"id\" claim sent to the execution clients",
    },
    Flag {
        name: "metrics-addr",
        value: Some("HOST:PORT"),
        default: "",
        env: "METRICS_ADDR",
        help: "also serve /metrics, /status, /healthz and /readyz (and nothing else) on this address",
    },
    Flag {
        name: "builder-ca",
        value: Some("FILE"),
        default: "",
        env: "",
        help: "PEM file of CA certificates trusted for https:// builders, besides the system's \
               (for a private CA)",
    },
];

pub(super) const TOKENS_FLAGS: &[Flag] = &[
    Flag {
        name: "addr",
        value: Some("HOST:PORT"),
        default: "localhost:1337",
        env: "",
        help: "address to serve tokens on (\":PORT\" means every interface)",
    },
    Flag {
        name: "config",
        value: Some("FILE"),
        default: "config.json",
        env: "",
        help: "JSON file mapping a name to its hex JWT secret",
    },
    Flag { name: "client-id", value: Some("ID"), default: "", env: "", help: "the JWT \"id\" claim" },
    LOGLEVEL_FLAG,
    JSON_FLAG,
];

/// Usage with every flag, its default and environment variable. It never sees a secret.
pub fn help_text() -> String {
    render_help(
        "sync-proxy",
        "Fans the Ethereum Engine API out from the best beacon node to several execution clients.",
        "sync-proxy --builders HOST:PORT[,HOST:PORT...] [FLAGS]",
        PROXY_FLAGS,
    )
}

/// Usage of `jwt-tokens-service`, like [`help_text`].
pub fn tokens_service_help_text() -> String {
    render_help(
        "jwt-tokens-service",
        "Serves fresh Engine API JWTs for the secrets in its config file.",
        "jwt-tokens-service [FLAGS]",
        TOKENS_FLAGS,
    )
}

pub(super) enum Parsed {
    Help,
    Version,
    Args(RawArgs),
}

/// Flag values as given, before validation; the last occurrence of a flag wins, as in Go.
pub(super) struct RawArgs {
    values: BTreeMap<&'static str, OsString>,
}

impl RawArgs {
    pub(super) fn os(&self, name: &str) -> Option<&OsString> {
        self.values.get(name)
    }

    /// The flag's value as UTF-8 text, if it was given.
    pub(super) fn text(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        match self.os(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .ok_or_else(|| ConfigError(format!("--{name}: the value is not valid UTF-8: {value:?}"))),
        }
    }

    pub(super) fn path(&self, name: &str) -> Option<PathBuf> {
        self.os(name).map(PathBuf::from)
    }

    /// A boolean flag's value; the parser stored it already checked.
    pub(super) fn boolean(&self, name: &str) -> Option<bool> {
        self.os(name).map(|value| value == "true")
    }
}

pub(super) fn parse_raw(args: Vec<OsString>, flags: &'static [Flag]) -> Result<Parsed, ConfigError> {
    use lexopt::Arg;

    let args = single_dash_to_double(args, &|name| flags.iter().any(|f| f.name == name && f.takes_value()));
    let mut parser = lexopt::Parser::from_args(args);
    let mut values = BTreeMap::new();
    while let Some(arg) = parser.next().map_err(lexopt_error)? {
        let flag = match arg {
            Arg::Short('h') | Arg::Long("h") | Arg::Long("help") => return Ok(Parsed::Help),
            Arg::Long("version") => return Ok(Parsed::Version),
            Arg::Long(name) => flags
                .iter()
                .find(|f| f.name == name)
                .ok_or_else(|| ConfigError(format!("unknown flag --{name} (see --help)")))?,
            Arg::Short(c) => return Err(ConfigError(format!("unknown flag -{c} (see --help)"))),
            Arg::Value(value) => {
                return Err(ConfigError(format!(
                    "unexpected argument {value:?}: every setting is a flag (see --help)"
                )))
            }
        };
        let value = if flag.takes_value() {
            parser.value().map_err(lexopt_error)?
        } else {
            // Go's boolean flags take a value only after "=": "-json false" is "-json" followed
            // by a positional argument.
            let text = parser.optional_value().unwrap_or_else(|| "true".into());
            let on = text.to_str().and_then(parse_go_bool).ok_or_else(|| {
                ConfigError(format!("--{}: invalid boolean {text:?}: use true or false", flag.name))
            })?;
            OsString::from(if on { "true" } else { "false" })
        };
        values.insert(flag.name, value);
    }
    Ok(Parsed::Args(RawArgs { values }))
}

/// Rewrites Go-style `-flag` into `--flag` so that lexopt does not read it as a cluster of short
/// options. Only arguments in option position that look like `-<letter><more>` are rewritten:
/// `-h` and a lone `-` stay as they are, and nothing is rewritten after a `--` terminator or
/// where the previous argument is a flag still waiting for its value (so `--jwt-client-id -abc`
/// keeps its value, as Go's `flag` would).
pub(super) fn single_dash_to_double(
    args: Vec<OsString>,
    takes_value: &dyn Fn(&str) -> bool,
) -> Vec<OsString> {
    let mut out = Vec::with_capacity(args.len());
    let mut waiting_for_value = false;
    let mut terminated = false;
    for arg in args {
        if waiting_for_value || terminated {
            waiting_for_value = false;
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            terminated = true;
            out.push(arg);
            continue;
        }
        let long = if let Some(rest) = text.strip_prefix("--") {
            Some(rest)
        } else {
            let rest = text.strip_prefix('-').unwrap_or("");
            let mut chars = rest.chars();
            match (chars.next(), chars.next()) {
                (Some(first), Some(_)) if first.is_ascii_alphabetic() => Some(rest),
                _ => None,
            }
        };
        match long {
            Some(rest) => {
                let (name, has_inline_value) = match rest.split_once('=') {
                    Some((name, _)) => (name, true),
                    None => (rest, false),
                };
                waiting_for_value = !has_inline_value && takes_value(name);
                out.push(OsString::from(format!("--{rest}")));
            }
            None => out.push(arg),
        }
    }
    out
}

pub(super) fn lexopt_error(error: lexopt::Error) -> ConfigError {
    match error {
        lexopt::Error::MissingValue { option: Some(option) } => {
            ConfigError(format!("missing value for {option}"))
        }
        other => ConfigError(other.to_string()),
    }
}

/// Go's `strconv.ParseBool`.
pub(super) fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

pub(super) fn default_of(flags: &[Flag], name: &str) -> &'static str {
    flags.iter().find(|f| f.name == name).map(|f| f.default).unwrap_or("")
}

pub(super) fn env_of(flags: &[Flag], name: &str) -> &'static str {
    flags.iter().find(|f| f.name == name).map(|f| f.env).unwrap_or("")
}

pub(super) fn render_help(program: &str, about: &str, usage: &str, flags: &[Flag]) -> String {
    let mut out = format!("{program} {}\n{about}\n\nUsage: {usage}\n\n", env!("CARGO_PKG_VERSION"));
    let mut intro = String::from(
        "Flags work with one dash or two, and take their value as the next argument or after \
         \"=\": -loglevel debug, --loglevel=debug. Boolean flags take a value only after \"=\": \
         -json, -json=false. Environment variables give defaults; flags override.",
    );
    if flags.iter().any(|f| f.value == Some("MS")) {
        intro.push_str(" Durations are whole milliseconds.");
    }
    wrap_into(&mut out, "", &intro);
    out.push_str("\nFlags:\n");
    for flag in flags {
        match flag.value {
            Some(value) => out.push_str(&format!("  --{} {value}\n", flag.name)),
            None => out.push_str(&format!("  --{}\n", flag.name)),
        }
        wrap_into(&mut out, "      ", flag.help);
        let mut origin = String::new();
        if !flag.default.is_empty() {
            origin.push_str(&format!("[default: {}]", flag.default));
        }
        if !flag.env.is_empty() {
            origin.push_str(&format!(" [env: {}]", flag.env));
        }
        if !origin.is_empty() {
            out.push_str(&format!("      {}\n", origin.trim_start()));
        }
    }
    out.push_str("  -h, --help\n      print this help\n  --version\n      print the version\n");
    out
}

/// Appends `text` word-wrapped to 80 columns, each line starting with `indent`.
pub(super) fn wrap_into(out: &mut String, indent: &str, text: &str) {
    const WIDTH: usize = 80;
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from(indent);
        }
        if line.len() > indent.len() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::*;

    #[test]
    fn every_value_flag_in_every_spelling() {
        type Check = fn(&Config) -> bool;
        let table: &[(&str, &str, Check)] = &[
            ("addr", "127.0.0.1:0", |c| c.listen == loopback(0) && c.listen_text == "127.0.0.1:0"),
            ("builders", "127.0.0.1:1,127.0.0.2:2", |c| {
                c.builders.len() == 2
                    && c.builders[1].name == "127.0.0.2:2"
                    && c.builder_jwt_secrets.len() == 2
            }),
            ("proxies", "127.0.0.1:3", |c| c.proxies.len() == 1 && c.proxies[0].url == "http://127.0.0.1:3/"),
            ("request-timeout", "1500", |c| c.request_timeout == Some(Duration::from_millis(1500))),
            ("proxy-request-timeout", "250", |c| c.proxy_request_timeout == Duration::from_millis(250)),
            ("loglevel", "debug", |c| c.log_level == log::LevelFilter::Debug),
            ("max-body-bytes", "1048576", |c| c.max_body_bytes == 1_048_576),
            ("max-connections", "7", |c| c.max_connections == 7),
            ("idle-timeout", "5000", |c| c.idle_timeout == Duration::from_millis(5000)),
            ("read-timeout", "4000", |c| c.read_timeout == Duration::from_millis(4000)),
            ("write-timeout", "3000", |c| c.write_timeout == Duration::from_millis(3000)),
            ("backlog-requests", "9", |c| c.backlog_requests == 9),
            ("backlog-bytes", "4096", |c| c.backlog_bytes == 4096),
            ("beacon-expiry", "6000", |c| c.beacon_expiry == Duration::from_millis(6000)),
            ("jwt-client-id", "proxy-1", |c| c.jwt_client_id.as_deref() == Some("proxy-1")),
            ("metrics-addr", "127.0.0.1:9090", |c| c.metrics_addr == Some(loopback(9090))),
        ];
        for (flag, value, check) in table {
            for spelling in spellings(flag, value) {
                let mut args = vec!["--builders".to_owned(), BUILDER.to_owned()];
                args.extend(spelling);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let config = run(&args);
                assert!(check(&config), "{args:?} gave {config:?}");
            }
        }
    }

    #[test]
    fn boolean_flags_follow_go() {
        let table: &[(&str, bool)] = &[
            ("-json", true),
            ("--json", true),
            ("-json=true", true),
            ("--json=true", true),
            ("-json=false", false),
            ("--json=false", false),
            ("-json=1", true),
            ("-json=0", false),
            ("-json=t", true),
            ("-json=F", false),
            ("-json=TRUE", true),
            ("-json=False", false),
        ];
        for (arg, expected) in table {
            assert_eq!(run(&["-builders", BUILDER, arg]).log_json, *expected, "{arg}");
            let mirror = arg.replace("json", "mirror-mode");
            assert_eq!(run(&["-builders", BUILDER, &mirror]).mirror_mode, *expected, "{mirror}");
        }
    }

    #[test]
    fn boolean_flag_rejects_other_values() {
        for arg in ["-json=maybe", "--json=", "--mirror-mode=yes"] {
            let message = error(&["-builders", BUILDER, arg]);
            assert_mentions(&message, &["invalid boolean"]);
        }
    }

    #[test]
    fn boolean_flag_does_not_take_the_next_argument() {
        // Go reads "-json false" as -json followed by a positional argument.
        let message = error(&["-builders", BUILDER, "-json", "false"]);
        assert_mentions(&message, &["unexpected argument", "false"]);
    }

    #[test]
    fn the_last_occurrence_of_a_flag_wins() {
        let config = run(&[
            "-builders",
            "127.0.0.1:1",
            "--loglevel=error",
            "-builders=127.0.0.1:2",
            "-loglevel",
            "trace",
            "-json",
            "-json=false",
        ]);
        assert_eq!(config.builders[0].name, "127.0.0.1:2");
        assert_eq!(config.log_level, log::LevelFilter::Trace);
        assert!(!config.log_json);
    }

    #[test]
    fn help_and_version() {
        let table: &[(&[&str], Command)] = &[
            (&["-h"], Command::Help),
            (&["--help"], Command::Help),
            (&["-help"], Command::Help),
            (&["--h"], Command::Help),
            (&["--version"], Command::Version),
            (&["-version"], Command::Version),
            // Help needs no builders, and wins over what follows it, as in Go.
            (&["--addr", "nonsense", "-h", "--bogus"], Command::Help),
            (&["-version", "positional"], Command::Version),
        ];
        for (args, expected) in table {
            assert_eq!(&parse(os_args(args), &no_env).unwrap(), expected, "{args:?}");
        }
    }

    #[test]
    fn unknown_flags_are_named() {
        let table: &[(&[&str], &str)] = &[
            (&["-bogus"], "--bogus"),
            (&["--bogus=1"], "--bogus"),
            (&["-x"], "-x"),
            (&["--builder", BUILDER], "--builder"),
            // A jwt-tokens-service flag is not a sync-proxy flag.
            (&["-config", "x"], "--config"),
        ];
        for (args, name) in table {
            let mut all = vec!["-builders", BUILDER];
            all.extend_from_slice(args);
            let message = error(&all);
            assert_mentions(&message, &["unknown flag", name]);
        }
    }

    #[test]
    fn missing_values_are_named() {
        for flag in PROXY_FLAGS.iter().filter(|f| f.takes_value()) {
            for dash in ["-", "--"] {
                let last = format!("{dash}{}", flag.name);
                let message = error(&["-builders", BUILDER, &last]);
                assert_mentions(&message, &["missing value", &format!("--{}", flag.name)]);
            }
        }
    }

    #[test]
    fn positional_arguments_are_errors() {
        let table: &[&[&str]] = &[&["stray"], &["-"], &["--", "--addr", "127.0.0.1:0"], &["-5"]];
        for args in table {
            let mut all = vec!["-builders", BUILDER];
            all.extend_from_slice(args);
            let message = error(&all);
            // "-5" is a short option to lexopt; either way it is rejected by name.
            assert!(
                message.contains("unexpected argument") || message.contains("unknown flag -5"),
                "{args:?}: {message}"
            );
        }
    }

    #[test]
    fn single_dash_rewriting() {
        let takes_value = |name: &str| matches!(name, "addr" | "jwt-client-id");
        let table: &[(&[&str], &[&str])] = &[
            (&["-addr", "x"], &["--addr", "x"]),
            (&["-addr=x"], &["--addr=x"]),
            (&["--addr", "x"], &["--addr", "x"]),
            (&["-h", "-", "-5", "-x"], &["-h", "-", "-5", "-x"]),
            (&["-json", "-addr", "-abc"], &["--json", "--addr", "-abc"]),
            (&["-jwt-client-id", "-abc", "-json"], &["--jwt-client-id", "-abc", "--json"]),
            (&["-addr=x", "-json"], &["--addr=x", "--json"]),
            (&["--", "-json", "-addr"], &["--", "-json", "-addr"]),
            (&["positional", "-json"], &["positional", "--json"]),
        ];
        for (input, expected) in table {
            let output = single_dash_to_double(os_args(input), &takes_value);
            assert_eq!(output, os_args(expected), "{input:?}");
        }
    }

    #[test]
    fn a_value_that_looks_like_a_flag_is_kept() {
        let config = run(&["-builders", BUILDER, "-jwt-client-id", "-abc"]);
        assert_eq!(config.jwt_client_id.as_deref(), Some("-abc"));
    }

    #[test]
    fn help_mentions_every_flag_default_and_variable() {
        for (help, flags) in [(help_text(), PROXY_FLAGS), (tokens_service_help_text(), TOKENS_FLAGS)] {
            for flag in flags {
                assert!(help.contains(&format!("--{}", flag.name)), "--{}", flag.name);
                if !flag.default.is_empty() {
                    assert!(help.contains(&format!("[default: {}]", flag.default)), "{}", flag.name);
                }
                if !flag.env.is_empty() {
                    assert!(help.contains(&format!("[env: {}]", flag.env)), "{}", flag.name);
                }
            }
            assert_mentions(&help, &["--help", "--version", env!("CARGO_PKG_VERSION")]);
            assert!(!help.contains("0x"), "help has secret-like content");
        }
        assert_mentions(
            &help_text(),
            &["PROXY_LISTEN_ADDR", "BUILDER_TIMEOUT_MS", "LOG_LEVEL", "LOG_JSON", "BEACON_EXPIRY_MS"],
        );
    }

    #[test]
    fn help_defaults_are_the_parsed_defaults() {
        // The table's defaults feed both the help and the parser; check the numbers agree with
        // the documented ones so a typo in the table cannot go unnoticed.
        let expected = [
            ("addr", "localhost:25590"),
            ("proxy-request-timeout", "2000"),
            ("loglevel", "info"),
            ("max-body-bytes", "134217728"),
            ("max-connections", "1024"),
            ("idle-timeout", "60000"),
            ("read-timeout", "30000"),
            ("write-timeout", "10000"),
            ("backlog-requests", "512"),
            ("backlog-bytes", "268435456"),
            ("beacon-expiry", "12000"),
        ];
        for (name, default) in expected {
            assert_eq!(default_of(PROXY_FLAGS, name), default, "{name}");
        }
    }
}
