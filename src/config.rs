//! Raw command line and environment → validated, typed [`Config`] (and [`TokensServiceConfig`]
//! for the `jwt-tokens-service` binary).
//!
//! Parsing happens in two steps, as in ripgrep: `lexopt` turns the arguments into raw flag values
//! ([`RawArgs`]), then validation turns those, the environment and the flag table's defaults into
//! typed values. Addresses are resolved here at start-up (blocking DNS is fine then), and
//! secret files are read here; [`read_reloadable`] reads the builder list and the secret files again
//! for a SIGHUP, on the helper thread of `resolve`, which also looks names up again while the
//! proxy runs. The event loop itself never touches the file system or DNS.
//!
//! Knows no mio, no sockets beyond resolving addresses, no HTTP, no JWT minting.
//!
//! Compatibility with the Go flashbots/sync-proxy: every flag works as `-flag` and `--flag`, with
//! its value as the next argument or after `=`; booleans follow Go's `flag` package (`-json`,
//! `-json=true`, `-json=false`, but never `-json false`). Environment variables are defaults that
//! flags override. Like Go, invalid integers in the environment (`BUILDER_TIMEOUT_MS=abc`) are
//! silently ignored; zero and negative values are ignored too, because a zero timeout has no
//! meaning here. Unlike Go, an empty environment variable counts as unset. `MIRROR_MODE` (newer
//! upstream releases read it, as they read `METRICS_ADDR`) takes Go's boolean spellings; any
//! other value is an error instead of a silent false.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jwt::{self, Secret};
use crate::tls;

/// What `sync-proxy` was asked to do.
// Built once at start-up and moved into the event loop, so the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Run(Config),
    Help,
    Version,
}

/// Everything `sync-proxy` needs to run, validated and resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Resolved from `--addr`, preferring the first IPv4 address, because Go's
    /// `localhost:25590` listens on 127.0.0.1.
    pub listen: SocketAddr,
    /// `--addr` as given, for logs.
    pub listen_text: String,
    /// `--builders`: at least one; the first is the primary.
    pub builders: Vec<Endpoint>,
    /// `--proxies`: other proxies that get a copy of every request; may be empty.
    pub proxies: Vec<Endpoint>,
    /// `--request-timeout` / `BUILDER_TIMEOUT_MS`; `None` means the per-method Engine API timeouts.
    pub request_timeout: Option<Duration>,
    /// `--proxy-request-timeout`; defaults to `BUILDER_TIMEOUT_MS`, else 2000 ms, as in Go.
    pub proxy_request_timeout: Duration,
    /// `--loglevel` / `LOG_LEVEL`.
    pub log_level: log::LevelFilter,
    /// `--json` / `LOG_JSON`.
    pub log_json: bool,
    /// `--mirror-mode`: acknowledge every request at once (for nginx `mirror`).
    pub mirror_mode: bool,
    /// `--max-body-bytes`: the largest request or answer body accepted.
    pub max_body_bytes: usize,
    /// `--memory-budget-bytes`: the process-wide budget of bytes in bodies and answers
    /// (see `core::budget`).
    pub memory_budget_bytes: usize,
    /// `--max-connections`: inbound beacon node connections.
    pub max_connections: usize,
    /// `--idle-timeout`: keep-alive connections idle this long are closed.
    pub idle_timeout: Duration,
    /// `--read-timeout`: a request must arrive whole within this of its first byte.
    pub read_timeout: Duration,
    /// `--write-timeout`: a client owed answers that takes no byte of them for this long is
    /// closed.
    pub write_timeout: Duration,
    /// `--backlog-requests`: bound on each EL's ordered backlog (count).
    pub backlog_requests: usize,
    /// `--backlog-bytes`: bound on each EL's ordered backlog (bytes).
    pub backlog_bytes: usize,
    /// `--beacon-expiry` / `BEACON_EXPIRY_MS`: the best BN is forgotten after this long without
    /// a request from it.
    pub beacon_expiry: Duration,
    /// `--jwt-secret`: the secret beacon nodes sign with; every POST must carry a valid token.
    pub jwt_secret: Option<Secret>,
    /// `--builder-jwt-secrets`: one slot per builder, in the order of `builders`.
    pub builder_jwt_secrets: Vec<Option<Secret>>,
    /// `--jwt-client-id`: the JWT `id` claim; an empty value means none.
    pub jwt_client_id: Option<String>,
    /// `--metrics-addr`: an optional second listener for `/metrics`.
    pub metrics_addr: Option<SocketAddr>,
    /// Where `builders` and the secrets came from, to read them again on SIGHUP.
    pub reload: ReloadSource,
    /// `--builder-ca`: extra root certificates (DER) trusted for `https://` execution clients,
    /// besides the system's.
    pub builder_ca: Vec<Vec<u8>>,
}

/// Where the builders come from: `--builders` or `--builders-file` (never both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuilderList {
    /// `--builders` as given (its names are looked up again at a reload).
    Flag(String),
    /// `--builders-file`: one EL per line, read again at a reload.
    File(PathBuf),
}

/// What a reload (SIGHUP) reads again: the builder list and the secret files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadSource {
    pub builders: BuilderList,
    pub jwt_secret: Option<PathBuf>,
    pub builder_jwt_secrets: Option<PathBuf>,
}

/// The part of the configuration a reload replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub builders: Vec<Endpoint>,
    pub jwt_secret: Option<Secret>,
    pub builder_jwt_secrets: Vec<Option<Secret>>,
}

impl Config {
    /// The settings of a listener that forwards nothing (the `jwt-tokens-service` binary runs the
    /// same event loop with no execution clients): every limit at its default.
    pub fn serving_only(tokens: &TokensServiceConfig) -> Config {
        let millis =
            |name: &str| parse_millis(name, default_of(PROXY_FLAGS, name)).unwrap_or(Duration::from_secs(1));
        let count = |name: &str| parse_count(name, default_of(PROXY_FLAGS, name)).unwrap_or(1);
        Config {
            listen: tokens.listen,
            listen_text: tokens.listen_text.clone(),
            builders: Vec::new(),
            proxies: Vec::new(),
            request_timeout: None,
            proxy_request_timeout: millis("proxy-request-timeout"),
            log_level: tokens.log_level,
            log_json: tokens.log_json,
            mirror_mode: false,
            max_body_bytes: 64 * 1024,
            memory_budget_bytes: count("memory-budget-bytes"),
            max_connections: count("max-connections"),
            idle_timeout: millis("idle-timeout"),
            read_timeout: millis("read-timeout"),
            write_timeout: millis("write-timeout"),
            backlog_requests: count("backlog-requests"),
            backlog_bytes: count("backlog-bytes"),
            beacon_expiry: millis("beacon-expiry"),
            jwt_secret: None,
            builder_jwt_secrets: Vec::new(),
            jwt_client_id: None,
            metrics_addr: None,
            reload: ReloadSource {
                builders: BuilderList::Flag(String::new()),
                jwt_secret: None,
                builder_jwt_secrets: None,
            },
            builder_ca: Vec::new(),
        }
    }
}

/// One `--builders` or `--proxies` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The entry exactly as written (trimmed), e.g. `localhost:8551`.
    pub name: String,
    /// Normalized `http[s]://host:port/path`: scheme and host lower-cased, port always present.
    pub url: String,
    /// For the Host header: `host[:port]` as written.
    pub host: String,
    /// The request target to use upstream, `/` if none.
    pub path: String,
    /// Resolved at start-up, IPv4 first; never empty. Names are looked up again while the proxy
    /// runs (see `resolve`), so the addresses an `Upstream` uses may differ from these.
    pub addrs: Vec<SocketAddr>,
}

impl Endpoint {
    /// Whether the client is reached over TLS (`https://`).
    pub fn is_https(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// The host alone, without brackets or port: the TLS server name (SNI) and the name its
    /// certificate must carry.
    pub fn server_name(&self) -> &str {
        let authority = self.host.as_str();
        if let Some(inner) = authority.strip_prefix('[') {
            return inner.split(']').next().unwrap_or(inner);
        }
        authority.rsplit_once(':').map_or(authority, |(host, _)| host)
    }
}

/// Everything `jwt-tokens-service` needs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensServiceConfig {
    pub listen: SocketAddr,
    pub listen_text: String,
    pub entries: Vec<(String, Secret)>,
    pub client_id: Option<String>,
    pub log_level: log::LevelFilter,
    pub log_json: bool,
}

/// What `jwt-tokens-service` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokensCommand {
    Run(TokensServiceConfig),
    Help,
    Version,
}

/// One clear line saying what is wrong. Never contains a secret: secret files are only ever
/// described by their path and the reason they were rejected.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One flag: the single source for parsing (which flags exist and which take a value), for
/// defaults, and for the help text, so the three cannot drift apart.
struct Flag {
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
    fn takes_value(&self) -> bool {
        self.value.is_some()
    }
}

/// The logging flags both binaries take.
const LOGLEVEL_FLAG: Flag = Flag {
    name: "loglevel",
    value: Some("LEVEL"),
    default: "info",
    env: "LOG_LEVEL",
    help: "trace, debug, info, warn (or warning), error (fatal and panic mean error), off",
};
const JSON_FLAG: Flag = Flag {
    name: "json",
    value: None,
    default: "false",
    env: "LOG_JSON",
    help: "log JSON lines instead of text (any non-empty LOG_JSON turns it on)",
};

const PROXY_FLAGS: &[Flag] = &[
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
        name: "memory-budget-bytes",
        value: Some("BYTES"),
        default: "1073741824",
        env: "",
        help: "bytes held in request bodies, queued answers and answers being read, all together; \
               when reached, new requests get 503 with Retry-After",
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

const TOKENS_FLAGS: &[Flag] = &[
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

/// Timeouts above a year are surely typos, and capping them keeps `Instant + timeout` far from
/// overflow everywhere else.
const MAX_MILLIS: u64 = 365 * 24 * 60 * 60 * 1000;

/// Go's `http` scheme default, used when an entry has no port.
const DEFAULT_HTTP_PORT: u16 = 80;
/// The same for `https://`.
const DEFAULT_HTTPS_PORT: u16 = 443;
/// Why a build without the cargo feature `tls` refuses `https://` and `--builder-ca`.
const NO_TLS: &str = "this build has no TLS (it was built without the cargo feature `tls`)";

/// `args` excludes argv[0]. `env` looks up environment variables (tests pass a closure over a map).
pub fn parse(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
    match parse_raw(args, PROXY_FLAGS)? {
        Parsed::Help => Ok(Command::Help),
        Parsed::Version => Ok(Command::Version),
        Parsed::Args(raw) => build_config(&raw, env).map(Command::Run),
    }
}

/// jwt-tokens-service: flags -addr (default "localhost:1337"), -config (default "config.json": a
/// JSON object name -> hex secret, parsed with jwt::parse_secret_map), -client-id, -loglevel,
/// -json; same single/double dash handling. `LOG_LEVEL` and `LOG_JSON` supply defaults as for
/// `sync-proxy`.
pub fn parse_tokens_service(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokensCommand, ConfigError> {
    match parse_raw(args, TOKENS_FLAGS)? {
        Parsed::Help => Ok(TokensCommand::Help),
        Parsed::Version => Ok(TokensCommand::Version),
        Parsed::Args(raw) => build_tokens_config(&raw, env).map(TokensCommand::Run),
    }
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

/// Parses one --builders/--proxies list entry (Go rules: trimmed; empty entries skipped by the
/// caller; "http://" prepended when the entry has no scheme; "https://" taken when the build has
/// TLS, else refused with "https is not supported: ..."), resolving the host with ToSocketAddrs.
///
/// Unlike Go, which prepends "http://" only when the entry does not start with "http", a host
/// that merely starts with "http" (`httpbin:80`) works too, because the scheme is recognised by
/// its `://`.
pub fn parse_endpoint(entry: &str) -> Result<Endpoint, ConfigError> {
    let parts = split_endpoint(entry)?;
    let name = entry.trim();
    if parts.url.starts_with("https://") {
        tls::check_server_name(&parts.host).map_err(|why| bad_endpoint(name, &why))?;
    }
    let mut addrs: Vec<SocketAddr> = (parts.host.as_str(), parts.port)
        .to_socket_addrs()
        .map_err(|e| bad_endpoint(name, &format!("cannot resolve {:?}: {e}", parts.host)))?
        .collect();
    // Stable sort: IPv4 first, the resolver's order otherwise, so "localhost" means 127.0.0.1
    // as it does for Go.
    addrs.sort_by_key(SocketAddr::is_ipv6);
    if addrs.is_empty() {
        return Err(bad_endpoint(name, "the host resolved to no address"));
    }
    Ok(Endpoint { name: name.to_owned(), url: parts.url, host: parts.authority, path: parts.path, addrs })
}

/// Reads the builder list and the secret files (at start-up, and again on SIGHUP): blocking
/// file reads and name lookups, so the running proxy calls it on its helper thread (`resolve`).
pub fn read_reloadable(source: &ReloadSource) -> Result<Reloaded, ConfigError> {
    let builders = match &source.builders {
        BuilderList::Flag(text) => {
            let builders = parse_endpoint_list(text, "--builders")?;
            if builders.is_empty() {
                return Err(ConfigError(
                    "no builders given: use --builders host:port[,host:port…]".to_owned(),
                ));
            }
            builders
        }
        BuilderList::File(path) => {
            let text = read_file(path, "--builders-file")?;
            let mut builders = Vec::new();
            for (line, entry) in builders_file_entries(&text) {
                let endpoint = parse_endpoint(entry).map_err(|e| {
                    ConfigError(format!("--builders-file {} line {line}: {}", show_path(path), e.0))
                })?;
                builders.push(endpoint);
            }
            if builders.is_empty() {
                return Err(ConfigError(format!(
                    "--builders-file {} lists no execution client (one host:port or URL per line)",
                    show_path(path)
                )));
            }
            builders
        }
    };
    let builder_jwt_secrets = match &source.builder_jwt_secrets {
        Some(path) => assign_builder_secrets(&builders, path)?,
        None => vec![None; builders.len()],
    };
    let jwt_secret = match &source.jwt_secret {
        Some(path) => Some(read_secret_file(path, "--jwt-secret")?),
        None => None,
    };
    Ok(Reloaded { builders, jwt_secret, builder_jwt_secrets })
}

/// The entries of a `--builders-file`, with their line numbers: one EL per line (commas split
/// a line as in `--builders`); blank lines and everything after a `#` are ignored (a URL cannot
/// contain `#`: fragments are refused).
fn builders_file_entries(text: &str) -> Vec<(usize, &str)> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        entries.extend(line.split(',').map(str::trim).filter(|e| !e.is_empty()).map(|e| (i + 1, e)));
    }
    entries
}

enum Parsed {
    Help,
    Version,
    Args(RawArgs),
}

/// Flag values as given, before validation; the last occurrence of a flag wins, as in Go.
struct RawArgs {
    values: BTreeMap<&'static str, OsString>,
}

impl RawArgs {
    fn os(&self, name: &str) -> Option<&OsString> {
        self.values.get(name)
    }

    /// The flag's value as UTF-8 text, if it was given.
    fn text(&self, name: &str) -> Result<Option<&str>, ConfigError> {
        match self.os(name) {
            None => Ok(None),
            Some(value) => value
                .to_str()
                .map(Some)
                .ok_or_else(|| ConfigError(format!("--{name}: the value is not valid UTF-8: {value:?}"))),
        }
    }

    fn path(&self, name: &str) -> Option<PathBuf> {
        self.os(name).map(PathBuf::from)
    }

    /// A boolean flag's value; the parser stored it already checked.
    fn boolean(&self, name: &str) -> Option<bool> {
        self.os(name).map(|value| value == "true")
    }
}

fn parse_raw(args: Vec<OsString>, flags: &'static [Flag]) -> Result<Parsed, ConfigError> {
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
fn single_dash_to_double(args: Vec<OsString>, takes_value: &dyn Fn(&str) -> bool) -> Vec<OsString> {
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

fn lexopt_error(error: lexopt::Error) -> ConfigError {
    match error {
        lexopt::Error::MissingValue { option: Some(option) } => {
            ConfigError(format!("missing value for {option}"))
        }
        other => ConfigError(other.to_string()),
    }
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

fn build_config(raw: &RawArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
    let (listen_text, listen) = listen_setting(raw, PROXY_FLAGS, env)?;

    let builders_text = raw.text("builders")?.unwrap_or("");
    let builders =
        match raw.path("builders-file") {
            Some(_) if !builders_text.trim().is_empty() => return Err(ConfigError(
                "--builders and --builders-file exclude each other: list the execution clients in one place"
                    .to_owned(),
            )),
            Some(path) => BuilderList::File(path),
            None => BuilderList::Flag(builders_text.to_owned()),
        };
    let source = ReloadSource {
        builders,
        jwt_secret: raw.path("jwt-secret"),
        builder_jwt_secrets: raw.path("builder-jwt-secrets"),
    };
    let Reloaded { builders, jwt_secret, builder_jwt_secrets } = read_reloadable(&source)?;
    let proxies = parse_endpoint_list(raw.text("proxies")?.unwrap_or(""), "--proxies")?;

    let builder_timeout_env = env_millis(env, "BUILDER_TIMEOUT_MS");
    let request_timeout = match raw.text("request-timeout")? {
        Some(text) => Some(parse_millis("request-timeout", text)?),
        None => builder_timeout_env,
    };
    // Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS too, not only to 2000.
    let proxy_request_timeout = match raw.text("proxy-request-timeout")? {
        Some(text) => parse_millis("proxy-request-timeout", text)?,
        None => match builder_timeout_env {
            Some(timeout) => timeout,
            None => parse_millis("proxy-request-timeout", default_of(PROXY_FLAGS, "proxy-request-timeout"))?,
        },
    };
    let beacon_expiry = match raw.text("beacon-expiry")? {
        Some(text) => parse_millis("beacon-expiry", text)?,
        None => match env_millis(env, "BEACON_EXPIRY_MS") {
            Some(expiry) => expiry,
            None => parse_millis("beacon-expiry", default_of(PROXY_FLAGS, "beacon-expiry"))?,
        },
    };

    let (log_level, log_json) = log_settings(raw, PROXY_FLAGS, env)?;

    let metrics_addr = match string_setting(raw, PROXY_FLAGS, "metrics-addr", env)? {
        (text, Source::Default) if text.is_empty() => None,
        (text, source) => Some(resolve_listen(&text, &describe("metrics-addr", &source))?),
    };
    let mirror_mode = bool_setting(raw, PROXY_FLAGS, "mirror-mode", env)?;

    let builder_ca = match raw.path("builder-ca") {
        Some(path) => read_builder_ca(&path)?,
        None => Vec::new(),
    };

    Ok(Config {
        listen,
        listen_text,
        builders,
        proxies,
        request_timeout,
        proxy_request_timeout,
        log_level,
        log_json,
        mirror_mode,
        max_body_bytes: count_setting(raw, "max-body-bytes")?,
        memory_budget_bytes: count_setting(raw, "memory-budget-bytes")?,
        max_connections: count_setting(raw, "max-connections")?,
        idle_timeout: millis_setting(raw, "idle-timeout")?,
        read_timeout: millis_setting(raw, "read-timeout")?,
        write_timeout: millis_setting(raw, "write-timeout")?,
        backlog_requests: count_setting(raw, "backlog-requests")?,
        backlog_bytes: count_setting(raw, "backlog-bytes")?,
        beacon_expiry,
        jwt_secret,
        builder_jwt_secrets,
        jwt_client_id: non_empty(raw.text("jwt-client-id")?),
        metrics_addr,
        reload: source,
        builder_ca,
    })
}

fn build_tokens_config(
    raw: &RawArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokensServiceConfig, ConfigError> {
    let (listen_text, listen) = listen_setting(raw, TOKENS_FLAGS, env)?;
    let path = raw.path("config").unwrap_or_else(|| PathBuf::from(default_of(TOKENS_FLAGS, "config")));
    let text = read_file(&path, "--config")?;
    let entries = jwt::parse_secret_map(&text)
        .map_err(|why| ConfigError(format!("invalid --config file {}: {why}", show_path(&path))))?;
    if entries.is_empty() {
        return Err(ConfigError(format!(
            "--config file {} has no entries: it needs a JSON object of name to hex secret",
            show_path(&path)
        )));
    }
    let (log_level, log_json) = log_settings(raw, TOKENS_FLAGS, env)?;
    Ok(TokensServiceConfig {
        listen,
        listen_text,
        entries,
        client_id: non_empty(raw.text("client-id")?),
        log_level,
        log_json,
    })
}

fn default_of(flags: &[Flag], name: &str) -> &'static str {
    flags.iter().find(|f| f.name == name).map(|f| f.default).unwrap_or("")
}

fn env_of(flags: &[Flag], name: &str) -> &'static str {
    flags.iter().find(|f| f.name == name).map(|f| f.env).unwrap_or("")
}

/// An environment variable's value, with empty counting as unset.
fn env_text(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<String> {
    if var.is_empty() {
        return None;
    }
    env(var).filter(|value| !value.is_empty())
}

/// A millisecond count from the environment; anything but a positive integer is ignored, as Go's
/// `getEnvInt` ignores what `strconv.Atoi` rejects.
fn env_millis(env: &dyn Fn(&str) -> Option<String>, var: &str) -> Option<Duration> {
    env_text(env, var)
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|&ms| ms > 0 && ms <= MAX_MILLIS)
        .map(Duration::from_millis)
}

/// A boolean setting: the flag, else its environment variable read as Go's `strconv.ParseBool`
/// reads it (`1`, `t`, `true`, `TRUE`, `True`, and the same for false), else false. Any other
/// value in the variable is a configuration error rather than silently false: a mistyped
/// `MIRROR_MODE=yes` would otherwise quietly change how every request is answered.
fn bool_setting(
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
enum Source {
    Flag,
    Env(&'static str),
    Default,
}

/// A string setting: the flag, else its environment variable, else its default.
fn string_setting(
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

fn describe(name: &str, source: &Source) -> String {
    match source {
        Source::Flag | Source::Default => format!("--{name}"),
        Source::Env(var) => format!("{var} (the default of --{name})"),
    }
}

fn listen_setting(
    raw: &RawArgs,
    flags: &[Flag],
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, SocketAddr), ConfigError> {
    let (text, source) = string_setting(raw, flags, "addr", env)?;
    let listen = resolve_listen(&text, &describe("addr", &source))?;
    Ok((text, listen))
}

fn log_settings(
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

fn parse_millis(name: &str, text: &str) -> Result<Duration, ConfigError> {
    match text.parse::<u64>() {
        Ok(ms) if ms > 0 && ms <= MAX_MILLIS => Ok(Duration::from_millis(ms)),
        _ => Err(ConfigError(format!(
            "--{name}: expected a whole number of milliseconds from 1 to {MAX_MILLIS}, \
             got {text:?}"
        ))),
    }
}

fn parse_count(name: &str, text: &str) -> Result<usize, ConfigError> {
    match text.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError(format!("--{name}: expected a positive whole number, got {text:?}"))),
    }
}

fn millis_setting(raw: &RawArgs, name: &str) -> Result<Duration, ConfigError> {
    let text = raw.text(name)?.unwrap_or(default_of(PROXY_FLAGS, name));
    parse_millis(name, text)
}

fn count_setting(raw: &RawArgs, name: &str) -> Result<usize, ConfigError> {
    let text = raw.text(name)?.unwrap_or(default_of(PROXY_FLAGS, name));
    parse_count(name, text)
}

fn non_empty(text: Option<&str>) -> Option<String> {
    text.filter(|text| !text.is_empty()).map(str::to_owned)
}

/// Resolves a listen address, preferring the first IPv4 address. `:PORT` means every interface,
/// as in Go; we pick 0.0.0.0 for it, in keeping with the IPv4 preference.
fn resolve_listen(text: &str, what: &str) -> Result<SocketAddr, ConfigError> {
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

/// Go's `parseURLs`: split on commas, trim, skip empty entries.
fn parse_endpoint_list(list: &str, flag: &str) -> Result<Vec<Endpoint>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| parse_endpoint(entry).map_err(|e| ConfigError(format!("{flag}: {}", e.0))))
        .collect()
}

/// An endpoint entry taken apart, before any DNS.
struct EndpointParts {
    /// `host[:port]` as written.
    authority: String,
    /// The host to resolve: lower-cased, without IPv6 brackets.
    host: String,
    port: u16,
    path: String,
    url: String,
}

fn bad_endpoint(entry: &str, why: &str) -> ConfigError {
    ConfigError(format!("bad URL {entry:?}: {why}"))
}

fn split_endpoint(entry: &str) -> Result<EndpointParts, ConfigError> {
    let entry = entry.trim();
    let bad = |why: &str| bad_endpoint(entry, why);
    if entry.is_empty() {
        return Err(bad("empty"));
    }
    if entry.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains spaces or control characters"));
    }
    let mut https = false;
    let rest = match entry.split_once("://") {
        Some((scheme, rest)) if is_scheme(scheme) => {
            https = scheme.eq_ignore_ascii_case("https");
            if https && !tls::ENABLED {
                return Err(ConfigError(format!("https is not supported: {entry:?}: {NO_TLS}; use http://")));
            }
            if !https && !scheme.eq_ignore_ascii_case("http") {
                return Err(bad("only http:// and https:// are supported"));
            }
            rest
        }
        _ => entry,
    };
    if rest.contains('#') {
        return Err(bad("a URL fragment (#) is not allowed"));
    }
    let (authority, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('?') => (&rest[..at], format!("/{}", &rest[at..])),
        Some(at) => (&rest[..at], rest[at..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    if authority.contains('@') {
        return Err(bad("user info (user@) is not supported"));
    }
    let (host, port, bracketed) = if let Some(inner) = authority.strip_prefix('[') {
        let (literal, tail) = inner.split_once(']').ok_or_else(|| bad("unterminated [IPv6] address"))?;
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address in brackets"));
        }
        let port = match tail {
            "" => None,
            _ => Some(
                tail.strip_prefix(':')
                    .ok_or_else(|| bad("unexpected text after the ] of the IPv6 address"))?,
            ),
        };
        (literal, port, true)
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        if host.contains(':') {
            return Err(bad("an IPv6 address needs brackets, as in [::1]:8551"));
        }
        if !host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')) {
            return Err(bad("the host has characters a host name cannot have"));
        }
        (host, port, false)
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None if https => DEFAULT_HTTPS_PORT,
        None => DEFAULT_HTTP_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(bad(&format!("invalid port {text:?}"))),
        },
    };
    let host = host.to_ascii_lowercase();
    let scheme = if https { "https" } else { "http" };
    let url = if bracketed {
        format!("{scheme}://[{host}]:{port}{path}")
    } else {
        format!("{scheme}://{host}:{port}{path}")
    };
    Ok(EndpointParts { authority: authority.to_owned(), host, port, path, url })
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn show_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Secret and config files are small; reading at most this much means a wrong path such as
/// `/dev/zero` fails with a clear error instead of filling memory.
const MAX_FILE_BYTES: u64 = 1 << 20;

fn read_file(path: &Path, flag: &str) -> Result<String, ConfigError> {
    use std::io::Read;
    let cannot =
        |e: &dyn std::fmt::Display| ConfigError(format!("cannot read {flag} file {}: {e}", show_path(path)));
    let file = std::fs::File::open(path).map_err(|e| cannot(&e))?;
    let mut text = String::new();
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| cannot(&e))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(cannot(&format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(text)
}

/// `--builder-ca`: the certificates of a PEM file, read and checked at start-up.
fn read_builder_ca(path: &Path) -> Result<Vec<Vec<u8>>, ConfigError> {
    const FLAG: &str = "--builder-ca";
    if !tls::ENABLED {
        return Err(ConfigError(format!("{FLAG}: {NO_TLS}")));
    }
    let text = read_file(path, FLAG)?;
    tls::parse_pem_certificates(text.as_bytes())
        .map_err(|why| ConfigError(format!("invalid {FLAG} file {}: {why}", show_path(path))))
}

fn read_secret_file(path: &Path, flag: &str) -> Result<Secret, ConfigError> {
    let text = read_file(path, flag)?;
    Secret::from_hex(&text).map_err(|e| ConfigError(format!("invalid {flag} file {}: {e}", show_path(path))))
}

/// Gives each builder the secret whose key is its name as written or its URL (compared after
/// normalizing the key, so `http://localhost:8551` finds `localhost:8551`). A key that matches
/// no builder is an error: it is surely a typo that would otherwise send the wrong secret.
fn assign_builder_secrets(builders: &[Endpoint], path: &Path) -> Result<Vec<Option<Secret>>, ConfigError> {
    const FLAG: &str = "--builder-jwt-secrets";
    let text = read_file(path, FLAG)?;
    let entries = jwt::parse_secret_map(&text)
        .map_err(|why| ConfigError(format!("invalid {FLAG} file {}: {why}", show_path(path))))?;
    let mut slots: Vec<Option<(String, Secret)>> = vec![None; builders.len()];
    for (key, secret) in entries {
        let key_url = split_endpoint(&key).ok().map(|parts| parts.url);
        let mut matched = false;
        for (builder, slot) in builders.iter().zip(slots.iter_mut()) {
            if builder.name != key && key_url.as_deref() != Some(builder.url.as_str()) {
                continue;
            }
            matched = true;
            if let Some((earlier, _)) = slot {
                return Err(ConfigError(format!(
                    "{FLAG} file {}: builder {:?} is matched by both {earlier:?} and {key:?}",
                    show_path(path),
                    builder.name
                )));
            }
            *slot = Some((key.clone(), secret.clone()));
        }
        if !matched {
            return Err(ConfigError(format!(
                "{FLAG} file {}: key {key:?} matches no builder in --builders",
                show_path(path)
            )));
        }
    }
    Ok(slots.into_iter().map(|slot| slot.map(|(_, secret)| secret)).collect())
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
fn wrap_into(out: &mut String, indent: &str, text: &str) {
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
    use std::collections::HashMap;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A secret whose hex and bytes are easy to spot in any output that leaks them.
    const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const OTHER_SECRET_HEX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
    const BUILDER: &str = "127.0.0.1:8551";

    fn os_args(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn env_map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| map.get(key).cloned()
    }

    #[track_caller]
    fn run_with(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Config {
        match parse(os_args(args), env) {
            Ok(Command::Run(config)) => config,
            other => panic!("{args:?}: expected a config, got {other:?}"),
        }
    }

    #[track_caller]
    fn run(args: &[&str]) -> Config {
        run_with(args, &no_env)
    }

    #[track_caller]
    fn error_with(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> String {
        match parse(os_args(args), env) {
            Err(ConfigError(message)) => {
                assert!(!message.contains('\n'), "not one line: {message:?}");
                message
            }
            Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    #[track_caller]
    fn error(args: &[&str]) -> String {
        error_with(args, &no_env)
    }

    #[track_caller]
    fn assert_mentions(message: &str, needles: &[&str]) {
        for needle in needles {
            assert!(message.contains(needle), "{message:?} does not mention {needle:?}");
        }
    }

    fn secret(hex: &str) -> Secret {
        Secret::from_hex(hex).unwrap()
    }

    /// A file under the temp dir, removed when dropped, so failing tests clean up too.
    struct TempFile {
        path: PathBuf,
    }

    impl TempFile {
        fn new(content: &str) -> TempFile {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "sync-proxy-config-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, content).unwrap();
            TempFile { path }
        }

        fn arg(&self) -> &str {
            self.path.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.path);
        }
    }

    /// The four spellings Go's flag package accepts for a flag with a value.
    fn spellings(flag: &str, value: &str) -> Vec<Vec<String>> {
        vec![
            vec![format!("-{flag}"), value.to_owned()],
            vec![format!("--{flag}"), value.to_owned()],
            vec![format!("-{flag}={value}")],
            vec![format!("--{flag}={value}")],
        ]
    }

    fn loopback(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }

    #[test]
    fn defaults_without_environment() {
        let config = run(&["--builders", BUILDER]);
        assert_eq!(config.listen, loopback(25590));
        assert_eq!(config.listen_text, "localhost:25590");
        assert_eq!(config.builders.len(), 1);
        assert_eq!(config.builders[0].name, BUILDER);
        assert!(config.proxies.is_empty());
        assert_eq!(config.request_timeout, None);
        assert_eq!(config.proxy_request_timeout, Duration::from_millis(2000));
        assert_eq!(config.log_level, log::LevelFilter::Info);
        assert!(!config.log_json);
        assert!(!config.mirror_mode);
        assert_eq!(config.max_body_bytes, 134_217_728);
        assert_eq!(config.max_connections, 1024);
        assert_eq!(config.idle_timeout, Duration::from_millis(60_000));
        assert_eq!(config.read_timeout, Duration::from_millis(30_000));
        assert_eq!(config.write_timeout, Duration::from_millis(10_000));
        assert_eq!(config.backlog_requests, 512);
        assert_eq!(config.backlog_bytes, 268_435_456);
        assert_eq!(config.beacon_expiry, Duration::from_millis(12_000));
        assert_eq!(config.jwt_secret, None);
        assert_eq!(config.builder_jwt_secrets, vec![None]);
        assert_eq!(config.jwt_client_id, None);
        assert_eq!(config.metrics_addr, None);
    }

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
    fn secret_flags_in_every_spelling() {
        let secret_file = TempFile::new(SECRET_HEX);
        let map_file = TempFile::new(&format!("{{\"{BUILDER}\": \"{OTHER_SECRET_HEX}\"}}"));
        for (flag, file) in [("jwt-secret", &secret_file), ("builder-jwt-secrets", &map_file)] {
            for spelling in spellings(flag, file.arg()) {
                let mut args = vec!["-builders".to_owned(), BUILDER.to_owned()];
                args.extend(spelling);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let config = run(&args);
                if flag == "jwt-secret" {
                    assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)), "{args:?}");
                } else {
                    assert_eq!(config.builder_jwt_secrets, vec![Some(secret(OTHER_SECRET_HEX))], "{args:?}");
                }
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
    fn builders_keep_their_order_and_skip_empty_entries() {
        let config = run(&["--builders", " 127.0.0.1:1 ,, 127.0.0.2:2,", "--proxies", ", ,"]);
        let names: Vec<&str> = config.builders.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:1", "127.0.0.2:2"]);
        assert!(config.proxies.is_empty());
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
    fn no_builders_is_an_error() {
        for args in [&[][..], &["--builders", ""], &["--builders", " , ,"], &["--proxies", BUILDER]] {
            let message = error(args);
            assert_eq!(message, "no builders given: use --builders host:port[,host:port…]", "{args:?}");
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

    /// entry, normalized url, Host header, request target, first resolved address.
    const ENDPOINT_CASES: &str = "
        127.0.0.1:8551                   http://127.0.0.1:8551/           127.0.0.1:8551  /           127.0.0.1:8551
        http://127.0.0.1:8551            http://127.0.0.1:8551/           127.0.0.1:8551  /           127.0.0.1:8551
        HTTP://127.0.0.1:8551/           http://127.0.0.1:8551/           127.0.0.1:8551  /           127.0.0.1:8551
        http://127.0.0.1:8551/engine/v1  http://127.0.0.1:8551/engine/v1  127.0.0.1:8551  /engine/v1  127.0.0.1:8551
        127.0.0.1:8551?a=b               http://127.0.0.1:8551/?a=b       127.0.0.1:8551  /?a=b       127.0.0.1:8551
        127.0.0.1                        http://127.0.0.1:80/             127.0.0.1       /           127.0.0.1:80
        httpbin:8551/x                   http://httpbin:8551/x            httpbin:8551    /x          -
        [::1]:8551                       http://[::1]:8551/               [::1]:8551      /           [::1]:8551
        http://[::1]:8551                http://[::1]:8551/               [::1]:8551      /           [::1]:8551
        http://[::1]/x                   http://[::1]:80/x                [::1]           /x          [::1]:80
        LocalHost:8551                   http://localhost:8551/           LocalHost:8551  /           127.0.0.1:8551
    ";

    #[test]
    fn endpoints() {
        for line in ENDPOINT_CASES.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [entry, url, host, path, first] = fields[..] else {
                panic!("bad case {line:?}");
            };
            // "-" marks a host that would need DNS: check the syntax only.
            if first == "-" {
                let parts = split_endpoint(entry).unwrap();
                assert_eq!((parts.url.as_str(), parts.authority.as_str()), (url, host));
                assert_eq!(parts.path, path, "{entry:?}");
                continue;
            }
            let endpoint = parse_endpoint(entry).unwrap();
            assert_eq!(endpoint.name, entry);
            assert_eq!(endpoint.url, url, "{entry:?}");
            assert_eq!(endpoint.host, host, "{entry:?}");
            assert_eq!(endpoint.path, path, "{entry:?}");
            assert_eq!(endpoint.addrs[0], first.parse().unwrap(), "{entry:?}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn https_endpoints_default_to_port_443_and_name_their_tls_server() {
        let cases = [
            ("https://127.0.0.1", "https://127.0.0.1:443/", "127.0.0.1", "127.0.0.1:443"),
            ("HTTPS://127.0.0.1:8551/x", "https://127.0.0.1:8551/x", "127.0.0.1", "127.0.0.1:8551"),
            ("https://[::1]:8551", "https://[::1]:8551/", "::1", "[::1]:8551"),
            ("https://LocalHost:8551", "https://localhost:8551/", "LocalHost", "127.0.0.1:8551"),
        ];
        for (entry, url, server_name, first) in cases {
            let endpoint = parse_endpoint(entry).unwrap();
            assert_eq!(endpoint.url, url, "{entry:?}");
            assert!(endpoint.is_https(), "{entry:?}");
            assert_eq!(endpoint.server_name(), server_name, "{entry:?}");
            assert_eq!(endpoint.addrs[0], first.parse().unwrap(), "{entry:?}");
        }
        assert!(!parse_endpoint("http://127.0.0.1:1").unwrap().is_https());
        assert_eq!(parse_endpoint("127.0.0.1:1").unwrap().server_name(), "127.0.0.1");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn builder_ca_reads_every_certificate_of_a_pem_file() {
        let pem = |cn: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.self_signed(&key).unwrap().pem()
        };
        let file = TempFile::new(&format!("{}\n{}", pem("one"), pem("two")));
        let config = run(&["--builders", "https://127.0.0.1:1", "--builder-ca", file.arg()]);
        assert_eq!(config.builder_ca.len(), 2);
        let empty = TempFile::new("# nothing here\n");
        let message = error(&["--builders", "https://127.0.0.1:1", "--builder-ca", empty.arg()]);
        assert_mentions(&message, &["invalid --builder-ca file", "no PEM certificate"]);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_https_and_builder_ca_are_refused() {
        for entry in ["https://127.0.0.1:8551", "HTTPS://127.0.0.1:8551"] {
            let message = parse_endpoint(entry).unwrap_err().0;
            assert_mentions(&message, &["https is not supported", entry, "cargo feature `tls`"]);
        }
        let file = TempFile::new("-----BEGIN CERTIFICATE-----\n");
        let message = error(&["--builders", BUILDER, "--builder-ca", file.arg()]);
        assert_mentions(&message, &["--builder-ca", "cargo feature `tls`"]);
    }

    #[test]
    fn endpoint_name_is_trimmed() {
        let endpoint = parse_endpoint(" \t127.0.0.1:8551 ").unwrap();
        assert_eq!(endpoint.name, "127.0.0.1:8551");
        assert_eq!(endpoint.host, "127.0.0.1:8551");
    }

    #[test]
    fn localhost_resolves_ipv4_first() {
        let endpoint = parse_endpoint("localhost:8551").unwrap();
        assert_eq!(endpoint.addrs[0], loopback(8551));
        let first_v6 = endpoint.addrs.iter().position(SocketAddr::is_ipv6);
        let last_v4 = endpoint.addrs.iter().rposition(SocketAddr::is_ipv4);
        if let (Some(v6), Some(v4)) = (first_v6, last_v4) {
            assert!(v4 < v6, "{:?}", endpoint.addrs);
        }
    }

    #[test]
    fn bad_endpoints() {
        let table = [
            ("ws://127.0.0.1:8551", "only http:// and https://"),
            ("127.0.0.1 :8551", "spaces"),
            ("http://", "empty host"),
            (":8551", "empty host"),
            ("http:///path", "empty host"),
            ("127.0.0.1:", "invalid port"),
            ("127.0.0.1:0", "invalid port"),
            ("127.0.0.1:65536", "invalid port"),
            ("127.0.0.1:+1", "invalid port"),
            ("127.0.0.1:http", "invalid port"),
            ("user:pw@127.0.0.1:8551", "user info"),
            ("http://user@127.0.0.1:8551", "user info"),
            ("::1:8551", "brackets"),
            ("[::1:8551", "unterminated"),
            ("[nope]:8551", "invalid IPv6"),
            ("[::1]x:8551", "after the ]"),
            ("127.0.0.1:8551#frag", "fragment"),
            ("exa%mple:8551", "characters"),
        ];
        for (entry, fragment) in table {
            match parse_endpoint(entry) {
                Err(ConfigError(message)) => {
                    assert_mentions(&message, &[fragment, entry.trim()]);
                }
                Ok(endpoint) => panic!("{entry:?} parsed as {endpoint:?}"),
            }
        }
    }

    #[test]
    fn bad_builder_and_proxy_entries_name_their_flag() {
        let message = error(&["--builders", "127.0.0.1:1,ws://127.0.0.1:2"]);
        assert_mentions(&message, &["--builders", "only http://", "ws://127.0.0.1:2"]);
        let message = error(&["--builders", BUILDER, "--proxies", "127.0.0.1:x"]);
        assert_mentions(&message, &["--proxies", "invalid port", "127.0.0.1:x"]);
    }

    #[test]
    fn jwt_secret_file_accepts_prefix_and_whitespace() {
        let file = TempFile::new(&format!("  0x{SECRET_HEX}\n"));
        let config = run(&["-builders", BUILDER, "-jwt-secret", file.arg()]);
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)));
    }

    #[test]
    fn unreadable_secret_files_are_named() {
        let missing =
            std::env::temp_dir().join(format!("sync-proxy-config-test-missing-{}", std::process::id()));
        let missing = missing.to_str().unwrap();
        for flag in ["--jwt-secret", "--builder-jwt-secrets"] {
            let message = error(&["-builders", BUILDER, flag, missing]);
            assert_mentions(&message, &["cannot read", flag, missing]);
        }
    }

    #[test]
    fn invalid_secret_files_are_named_without_their_content() {
        // Content that is almost a secret: it must never be echoed back.
        let almost = &SECRET_HEX[..60];
        let jwt = TempFile::new(almost);
        let message = error(&["-builders", BUILDER, "-jwt-secret", jwt.arg()]);
        assert_mentions(&message, &["invalid --jwt-secret file", jwt.arg()]);
        assert!(!message.contains(almost), "{message}");

        let map = TempFile::new(&format!("{{\"{BUILDER}\": \"{almost}\"}}"));
        let message = error(&["-builders", BUILDER, "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["invalid --builder-jwt-secrets file", map.arg()]);
        assert!(!message.contains(almost), "{message}");

        let not_json = TempFile::new(SECRET_HEX);
        let message = error(&["-builders", BUILDER, "-builder-jwt-secrets", not_json.arg()]);
        assert_mentions(&message, &["invalid --builder-jwt-secrets file", not_json.arg()]);
        assert!(!message.contains(SECRET_HEX), "{message}");
    }

    #[test]
    fn builder_secrets_match_by_name_or_url() {
        let builders = "127.0.0.1:1,http://127.0.0.2:2/engine,127.0.0.3:3";
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"127.0.0.2:2/engine\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let config = run(&["-builders", builders, "-builder-jwt-secrets", map.arg()]);
        assert_eq!(
            config.builder_jwt_secrets,
            vec![Some(secret(SECRET_HEX)), Some(secret(OTHER_SECRET_HEX)), None]
        );

        // A key written as a URL finds a builder written as host:port, and vice versa.
        let map = TempFile::new(&format!("{{\"http://127.0.0.3:3/\": \"{SECRET_HEX}\"}}"));
        let config = run(&["-builders", builders, "-builder-jwt-secrets", map.arg()]);
        assert_eq!(config.builder_jwt_secrets, vec![None, None, Some(secret(SECRET_HEX))]);
    }

    #[test]
    fn builder_secret_key_matching_no_builder_is_named() {
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"typo:8551\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let message = error(&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["\"typo:8551\"", "matches no builder", map.arg()]);
        assert!(!message.contains(OTHER_SECRET_HEX));

        // Proxies are not builders.
        let map = TempFile::new(&format!("{{\"127.0.0.9:9\": \"{SECRET_HEX}\"}}"));
        let message = error(&[
            "-builders",
            "127.0.0.1:1",
            "-proxies",
            "127.0.0.9:9",
            "-builder-jwt-secrets",
            map.arg(),
        ]);
        assert_mentions(&message, &["\"127.0.0.9:9\"", "matches no builder"]);
    }

    #[test]
    fn builder_matched_by_two_keys_is_an_error() {
        let map = TempFile::new(&format!(
            "{{\"127.0.0.1:1\": \"{SECRET_HEX}\", \"http://127.0.0.1:1\": \"{OTHER_SECRET_HEX}\"}}"
        ));
        let message = error(&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()]);
        assert_mentions(&message, &["matched by both", "127.0.0.1:1"]);
    }

    #[test]
    fn empty_client_id_means_none() {
        assert_eq!(run(&["-builders", BUILDER, "-jwt-client-id="]).jwt_client_id, None);
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

    #[test]
    fn debug_output_does_not_leak_secrets() {
        let jwt = TempFile::new(SECRET_HEX);
        let map = TempFile::new(&format!("{{\"{BUILDER}\": \"{OTHER_SECRET_HEX}\"}}"));
        let config =
            run(&["-builders", BUILDER, "-jwt-secret", jwt.arg(), "-builder-jwt-secrets", map.arg()]);
        let debug = format!("{config:?} {:?}", Command::Run(config.clone()));
        for leak in [&SECRET_HEX[..16], &OTHER_SECRET_HEX[..16], "[1, 35, 69", "[254, 220"] {
            assert!(!debug.contains(leak), "Debug leaks {leak:?}: {debug}");
        }
    }

    fn tokens_run(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> TokensServiceConfig {
        match parse_tokens_service(os_args(args), env) {
            Ok(TokensCommand::Run(config)) => config,
            other => panic!("{args:?}: expected a config, got {other:?}"),
        }
    }

    fn tokens_error(args: &[&str]) -> String {
        match parse_tokens_service(os_args(args), &no_env) {
            Err(ConfigError(message)) => message,
            Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn tokens_service_flags_in_every_spelling() {
        let file =
            TempFile::new(&format!("{{\"alpha\": \"{SECRET_HEX}\", \"beta\": \"{OTHER_SECRET_HEX}\"}}"));
        let base = ["-addr", "127.0.0.1:0", "-config", file.arg()];
        let config = tokens_run(&base, &no_env);
        assert_eq!(config.listen, loopback(0));
        assert_eq!(config.listen_text, "127.0.0.1:0");
        let names: Vec<&str> = config.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert_eq!(config.client_id, None);
        assert_eq!(config.log_level, log::LevelFilter::Info);
        assert!(!config.log_json);

        for spelling in spellings("client-id", "cl-1")
            .into_iter()
            .chain(spellings("loglevel", "debug"))
            .chain(spellings("addr", "127.0.0.1:7"))
            .chain(spellings("config", file.arg()))
            .chain([vec!["-json".to_owned()], vec!["--json=true".to_owned()]])
        {
            let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
            args.extend(spelling.iter().cloned());
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let config = tokens_run(&args, &no_env);
            let ok = match spelling[0].trim_start_matches('-').split('=').next().unwrap() {
                "client-id" => config.client_id.as_deref() == Some("cl-1"),
                "loglevel" => config.log_level == log::LevelFilter::Debug,
                "addr" => config.listen == loopback(7),
                "config" => config.entries.len() == 2,
                "json" => config.log_json,
                other => panic!("{other}"),
            };
            assert!(ok, "{args:?} gave {config:?}");
        }
    }

    #[test]
    fn tokens_service_environment_and_defaults() {
        let file = TempFile::new(&format!("{{\"alpha\": \"{SECRET_HEX}\"}}"));
        let env = env_map(&[("LOG_LEVEL", "trace"), ("LOG_JSON", "yes")]);
        let config = tokens_run(&["-addr=127.0.0.1:0", "-config", file.arg()], &env);
        assert_eq!(config.log_level, log::LevelFilter::Trace);
        assert!(config.log_json);
        assert_eq!(default_of(TOKENS_FLAGS, "addr"), "localhost:1337");
        assert_eq!(default_of(TOKENS_FLAGS, "config"), "config.json");
    }

    #[test]
    fn tokens_service_help_version_and_errors() {
        for (args, expected) in [
            (&["-h"][..], TokensCommand::Help),
            (&["-help"], TokensCommand::Help),
            (&["--version"], TokensCommand::Version),
        ] {
            assert_eq!(parse_tokens_service(os_args(args), &no_env).unwrap(), expected);
        }
        let file = TempFile::new(&format!("{{\"alpha\": \"{SECRET_HEX}\"}}"));
        let empty = TempFile::new("{}");
        let invalid = TempFile::new(&format!("{{\"alpha\": \"{}\"}}", &SECRET_HEX[..10]));
        let missing = format!("{}-missing", file.arg());
        let table: Vec<(Vec<&str>, Vec<&str>)> = vec![
            (vec!["-builders", "x", "-config", file.arg()], vec!["unknown flag", "--builders"]),
            (vec!["-config", &missing], vec!["cannot read --config file", &missing]),
            (vec!["-config", empty.arg()], vec!["no entries", empty.arg()]),
            (vec!["-config", invalid.arg()], vec!["invalid --config file", invalid.arg()]),
            (vec!["-config", file.arg(), "-addr", "nowhere"], vec!["bad address", "--addr"]),
            (vec!["-config", file.arg(), "-loglevel=loud"], vec!["bad log level"]),
            (vec!["-config", file.arg(), "stray"], vec!["unexpected argument"]),
            (vec!["-config"], vec!["missing value", "--config"]),
        ];
        for (args, needles) in table {
            let message = tokens_error(&args);
            assert_mentions(&message, &needles);
            assert!(!message.contains(&SECRET_HEX[..10]), "{message}");
        }
    }

    #[test]
    fn builders_file_lines_skip_blanks_and_comments() {
        let text = "# primary first\n127.0.0.1:8551\n\n  http://127.0.0.1:8552/  # spare\n127.0.0.1:8553,127.0.0.1:8554\n";
        assert_eq!(
            builders_file_entries(text),
            vec![
                (2, "127.0.0.1:8551"),
                (4, "http://127.0.0.1:8552/"),
                (5, "127.0.0.1:8553"),
                (5, "127.0.0.1:8554")
            ]
        );
    }

    #[test]
    fn builders_file_gives_the_builders_in_order() {
        let file = TempFile::new("# ELs\n127.0.0.1:8552\n127.0.0.1:8551\n");
        let config = run(&["--builders-file", file.arg()]);
        let names: Vec<&str> = config.builders.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["127.0.0.1:8552", "127.0.0.1:8551"]);
        assert_eq!(config.reload.builders, BuilderList::File(file.path.clone()));
    }

    #[test]
    fn builders_and_builders_file_exclude_each_other() {
        let file = TempFile::new("127.0.0.1:8552\n");
        let message = error(&["--builders", BUILDER, "--builders-file", file.arg()]);
        assert_mentions(&message, &["--builders and --builders-file exclude each other"]);
    }

    #[test]
    fn a_bad_builders_file_names_its_line_and_an_empty_one_is_refused() {
        let file = TempFile::new("127.0.0.1:8551\n\nhttps://el:8551\n");
        assert_mentions(&error(&["--builders-file", file.arg()]), &["--builders-file", "line 3", "https"]);
        let empty = TempFile::new("# nothing yet\n\n");
        assert_mentions(&error(&["--builders-file", empty.arg()]), &["lists no execution client"]);
        assert_mentions(&error(&["--builders-file", "/nonexistent/els"]), &["cannot read --builders-file"]);
    }

    #[test]
    fn reload_reads_the_secret_files_again() {
        let jwt = TempFile::new(SECRET_HEX);
        let config = run(&["--builders", BUILDER, "--jwt-secret", jwt.arg()]);
        assert_eq!(config.jwt_secret, Some(secret(SECRET_HEX)));
        std::fs::write(&jwt.path, OTHER_SECRET_HEX).unwrap();
        let reloaded = read_reloadable(&config.reload).unwrap();
        assert_eq!(reloaded.jwt_secret, Some(secret(OTHER_SECRET_HEX)));
        assert_eq!(reloaded.builders, config.builders);
        std::fs::write(&jwt.path, "not hex").unwrap();
        let message = read_reloadable(&config.reload).unwrap_err().0;
        assert_mentions(&message, &["--jwt-secret"]);
    }
}
