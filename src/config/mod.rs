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

mod endpoints;
mod files;
mod flags;
mod settings;
#[cfg(test)]
mod test_util;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::jwt::{self, Secret};
use crate::tls;

use endpoints::*;
pub use endpoints::{parse_endpoint, Endpoint};
use files::*;
use flags::*;
pub use flags::{help_text, tokens_service_help_text};
use settings::*;

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

fn non_empty(text: Option<&str>) -> Option<String> {
    text.filter(|text| !text.is_empty()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::*;

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
    fn empty_client_id_means_none() {
        assert_eq!(run(&["-builders", BUILDER, "-jwt-client-id="]).jwt_client_id, None);
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
}
