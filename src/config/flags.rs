//! The flag tables of both binaries, `lexopt` parsing into the flags as given ([`Given`]), and
//! `--help`. One table per binary is the single source for which flags exist, which take a value,
//! their defaults, their environment variables and their help, so the four cannot drift apart.
//!
//! Go compatibility: every flag works as `-flag` and `--flag`, with its value as the next
//! argument or after `=`; booleans follow Go's `flag` package (`-json`, `-json=true`,
//! `-json=false`, but never `-json false`). Knows no environment, files or DNS.

use std::collections::BTreeMap;
use std::ffi::OsString;

use super::settings::parse_go_bool;
use super::{Command, ConfigError};

/// One flag of a binary's table.
pub(super) struct Flag {
    pub(super) name: &'static str,
    /// Placeholder shown in the help; `None` marks a boolean flag.
    pub(super) value: Option<&'static str>,
    /// The default as a flag value would spell it; empty when there is none.
    pub(super) default: &'static str,
    /// The environment variable that supplies the default; empty when there is none.
    pub(super) env: &'static str,
    help: &'static str,
}

/// A flag that takes a value.
const fn value(
    name: &'static str,
    value: &'static str,
    default: &'static str,
    env: &'static str,
    help: &'static str,
) -> Flag {
    Flag { name, value: Some(value), default, env, help }
}

/// A boolean flag; it is false unless given (or set by its environment variable).
const fn boolean(name: &'static str, env: &'static str, help: &'static str) -> Flag {
    Flag { name, value: None, default: "false", env, help }
}

/// The logging flags both binaries take.
const LOGLEVEL_FLAG: Flag = value(
    "loglevel",
    "LEVEL",
    "info",
    "LOG_LEVEL",
    "trace, debug, info, warn (or warning), error (fatal and panic mean error), off",
);
const JSON_FLAG: Flag =
    boolean("json", "LOG_JSON", "log JSON lines instead of text (any non-empty LOG_JSON turns it on)");

// One flag a line or two: the table reads better unwrapped.
#[rustfmt::skip]
pub(super) const PROXY_FLAGS: &[Flag] = &[
    value("addr", "HOST:PORT", "localhost:25590", "PROXY_LISTEN_ADDR",
        "address the beacon nodes connect to (\":PORT\" means every interface)"),
    value("builders", "URL[,URL...]", "", "",
        "execution clients, comma-separated, as host:port or http://host:port/path; \
         required; the first is the primary, whose answers go back to the beacon node"),
    value("builders-file", "FILE", "", "",
        "execution clients, one per line (as in --builders; blank lines and # comments \
         allowed), instead of --builders; read again on SIGHUP"),
    value("proxies", "URL[,URL...]", "", "", "other sync-proxies that get a copy of every beacon node request"),
    value("request-timeout", "MS", "", "BUILDER_TIMEOUT_MS",
        "one timeout for every request to a builder; without it each Engine API method \
         gets its own timeout from the spec"),
    value("proxy-request-timeout", "MS", "2000", "BUILDER_TIMEOUT_MS", "timeout for requests to --proxies"),
    LOGLEVEL_FLAG,
    JSON_FLAG,
    boolean("mirror-mode", "MIRROR_MODE",
        "acknowledge every request at once instead of waiting for the primary \
         (for an nginx mirror); MIRROR_MODE takes true or false as Go spells them"),
    value("max-body-bytes", "BYTES", "134217728", "", "largest request or answer body accepted"),
    value("memory-budget-bytes", "BYTES", "1073741824", "",
        "bytes held in request bodies, queued answers and answers being read, all together; \
         when reached, new requests get 503 with Retry-After"),
    value("max-connections", "N", "1024", "", "most beacon node connections open at once"),
    value("idle-timeout", "MS", "60000", "", "close a keep-alive connection idle this long"),
    value("read-timeout", "MS", "30000", "", "a request must arrive whole within this of its first byte"),
    value("write-timeout", "MS", "10000", "",
        "close a connection that takes no byte of the answers it is owed for this long"),
    value("backlog-requests", "N", "512", "", "most ordered requests queued for one execution client"),
    value("backlog-bytes", "BYTES", "268435456", "", "most bytes of ordered requests queued for one execution client"),
    value("beacon-expiry", "MS", "12000", "BEACON_EXPIRY_MS",
        "forget the best beacon node after this long without a request from it"),
    value("answer-policy", "primary|safe", "primary", "",
        "what a beacon node is told about newPayload and forkchoiceUpdated: the primary's answer \
         (as the Go proxy), or, with safe, SYNCING when the execution clients split on validity"),
    // Long enough for a second EL on the same host to finish executing a block the first one
    // already validated, short against newPayload's 8 s timeout and the 4 s a validator has to attest.
    value("answer-wait", "MS", "1000", "",
        "with --answer-policy safe, how long answers are gathered after the first decisive one"),
    value("payload-choice", "primary|best-value", "primary", "",
        "whose payload a proposer gets: the one the BN's payloadId names, or, with best-value, \
         the highest blockValue any execution client built that came within 400 ms"),
    value("beacon-switch", "valid|not-invalid", "valid", "",
        "which EL answer to a payload with a larger (plausible) timestamp lets another beacon \
         node become the best: VALID only, or anything but INVALID or an error"),
    value("beacon-jwt-secrets", "FILE", "", "",
        "JSON file mapping a beacon node's identity (its token's id claim or its path) to its \
         own hex JWT secret, which alone then verifies its tokens; read again on SIGHUP"),
    value("jwt-secret", "FILE", "", "",
        "file with the 32-byte hex JWT secret the beacon nodes sign with; every POST must then \
         carry a valid token; read again on SIGHUP"),
    value("builder-jwt-secrets", "FILE", "", "",
        "JSON file mapping a builder (as written in --builders, or its URL) to its own \
         hex JWT secret; read again on SIGHUP"),
    value("jwt-client-id", "ID", "", "", "the JWT \"id\" claim sent to the execution clients"),
    value("metrics-addr", "HOST:PORT", "", "METRICS_ADDR",
        "also serve /metrics, /status, /healthz and /readyz (and nothing else) on this address"),
    value("builder-ca", "FILE", "", "",
        "PEM file of CA certificates trusted for https:// builders, besides the system's \
         (for a private CA)"),
];

#[rustfmt::skip]
pub(super) const TOKENS_FLAGS: &[Flag] = &[
    value("addr", "HOST:PORT", "localhost:1337", "", "address to serve tokens on (\":PORT\" means every interface)"),
    value("config", "FILE", "config.json", "", "JSON file mapping a name to its hex JWT secret"),
    value("client-id", "ID", "", "", "the JWT \"id\" claim"),
    LOGLEVEL_FLAG,
    JSON_FLAG,
];

/// The flag of that name in a table.
pub(super) fn find(flags: &'static [Flag], name: &str) -> Option<&'static Flag> {
    flags.iter().find(|f| f.name == name)
}

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

/// The flags as given, before validation: the last occurrence of a flag wins, as in Go, and a
/// boolean is stored checked, as `true` or `false`.
pub(super) type Given = BTreeMap<&'static str, OsString>;

/// `args` (without argv[0]) → help, version or the flags as given.
pub(super) fn parse_raw(args: Vec<OsString>, flags: &'static [Flag]) -> Result<Command<Given>, ConfigError> {
    use lexopt::Arg;

    let args = single_dash_to_double(args, &|name| find(flags, name).is_some_and(|f| f.value.is_some()));
    let mut parser = lexopt::Parser::from_args(args);
    let mut given = Given::new();
    while let Some(arg) = parser.next().map_err(lexopt_error)? {
        let flag = match arg {
            Arg::Short('h') | Arg::Long("h") | Arg::Long("help") => return Ok(Command::Help),
            Arg::Long("version") => return Ok(Command::Version),
            Arg::Long(name) => find(flags, name).ok_or_else(|| err!("unknown flag --{name} (see --help)"))?,
            Arg::Short(c) => return Err(err!("unknown flag -{c} (see --help)")),
            Arg::Value(value) => {
                return Err(err!("unexpected argument {value:?}: every setting is a flag (see --help)"))
            }
        };
        let value = if flag.value.is_some() {
            parser.value().map_err(lexopt_error)?
        } else {
            // Go's boolean flags take a value only after "=": "-json false" is "-json" followed
            // by a positional argument.
            let text = parser.optional_value().unwrap_or_else(|| "true".into());
            let on = text
                .to_str()
                .and_then(parse_go_bool)
                .ok_or_else(|| err!("--{}: invalid boolean {text:?}: use true or false", flag.name))?;
            OsString::from(if on { "true" } else { "false" })
        };
        given.insert(flag.name, value);
    }
    Ok(Command::Run(given))
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
    let (mut waiting_for_value, mut terminated) = (false, false);
    let mut rewrite = |arg: OsString| {
        let text = match arg.to_str() {
            Some(text) if !waiting_for_value && !terminated => text,
            _ => {
                waiting_for_value = false;
                return arg;
            }
        };
        terminated = text == "--";
        let long = text.strip_prefix("--").or_else(|| {
            let rest = text.strip_prefix('-')?;
            let mut chars = rest.chars();
            (chars.next()?.is_ascii_alphabetic() && chars.next().is_some()).then_some(rest)
        });
        let Some(rest) = long else { return arg };
        let name = rest.split_once('=').map_or(rest, |(name, _)| name);
        waiting_for_value = !rest.contains('=') && takes_value(name);
        OsString::from(format!("--{rest}"))
    };
    args.into_iter().map(&mut rewrite).collect()
}

fn lexopt_error(error: lexopt::Error) -> ConfigError {
    match error {
        lexopt::Error::MissingValue { option: Some(option) } => err!("missing value for {option}"),
        other => err!("{other}"),
    }
}

fn render_help(program: &str, about: &str, usage: &str, flags: &[Flag]) -> String {
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
        out.push_str(&format!(
            "  --{}{}\n",
            flag.name,
            flag.value.map(|v| format!(" {v}")).unwrap_or_default()
        ));
        wrap_into(&mut out, "      ", flag.help);
        let origin: Vec<String> = [("default", flag.default), ("env", flag.env)]
            .iter()
            .filter(|(_, text)| !text.is_empty())
            .map(|(what, text)| format!("[{what}: {text}]"))
            .collect();
        if !origin.is_empty() {
            out.push_str(&format!("      {}\n", origin.join(" ")));
        }
    }
    out.push_str("  -h, --help\n      print this help\n  --version\n      print the version\n");
    out
}

/// Appends `text` word-wrapped to 80 columns, each line starting with `indent`.
fn wrap_into(out: &mut String, indent: &str, text: &str) {
    let mut line = String::from(indent);
    for word in text.split_whitespace() {
        if line.len() > indent.len() && line.len() + 1 + word.len() > 80 {
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
