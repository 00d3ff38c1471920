//! Raw command line and environment → validated, typed [`Config`] (and [`TokensServiceConfig`]
//! for the `jwt-tokens-service` binary).
//!
//! Parsing happens in two steps, as in ripgrep: `flags` turns the arguments into the flags as
//! given with `lexopt`, then `settings` types each flag with one lookup order (flag, environment
//! variable, the table's default) and one wording for refusals; adding a flag is a row in the
//! flag table and a field here. Addresses are resolved at start-up (blocking DNS is fine then:
//! `endpoints`), and secret files are read here (`files`); [`read_reloadable`] reads the builder
//! list and the secret files again for a SIGHUP, on the helper thread of `resolve`, which also
//! looks names up again while the proxy runs. The event loop never touches the file system or DNS.
//!
//! Knows no mio, no sockets beyond resolving addresses, no HTTP, no JWT minting.

/// A [`ConfigError`] from a format string.
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::config::ConfigError(format!($($arg)*))
    };
}

mod endpoints;
mod files;
mod flags;
mod settings;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::answer_policy::AnswerPolicy;
use crate::beacons::{parse_beacon_secrets, Confirmation, Keys};
use crate::jwt::{parse_secret_map, Secret};
use crate::payload_choice::PayloadChoice;
pub use endpoints::{parse_endpoint, Endpoint};
use endpoints::{parse_endpoint_list, read_builders};
use files::{assign_builder_secrets, read_builder_ca, read_parsed, show_path};
pub use flags::{help_text, tokens_service_help_text};
use flags::{parse_raw, Given, PROXY_FLAGS, TOKENS_FLAGS};
use settings::{one_of, parse_bool, parse_count, parse_listen, parse_millis, Env, Settings};

/// What a binary was asked to do: run with `C` (a [`Config`] for `sync-proxy`, a
/// [`TokensServiceConfig`] for `jwt-tokens-service`), or print its help or version.
// Built once at start-up and moved into the event loop, so the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<C = Config> {
    Run(C),
    Help,
    Version,
}

/// Everything `sync-proxy` needs to run, validated and resolved. Each field is the flag of the
/// same name (see the flag table in `flags` for what it means).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `--addr`, resolved (see `settings::parse_listen`).
    pub listen: SocketAddr,
    /// `--addr` as given, for logs.
    pub listen_text: String,
    /// `--builders` or `--builders-file`: at least one; the first is the primary.
    pub builders: Vec<Endpoint>,
    pub proxies: Vec<Endpoint>,
    /// `None` means the per-method Engine API timeouts.
    pub request_timeout: Option<Duration>,
    pub proxy_request_timeout: Duration,
    /// `--loglevel`.
    pub log_level: log::LevelFilter,
    /// `--json`.
    pub log_json: bool,
    pub mirror_mode: bool,
    pub max_body_bytes: usize,
    /// See `core::budget`.
    pub memory_budget_bytes: usize,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub backlog_requests: usize,
    pub backlog_bytes: usize,
    pub beacon_expiry: Duration,
    pub payload_choice: PayloadChoice,
    pub answer_policy: AnswerPolicy,
    pub answer_wait: Duration,
    /// See `beacons::Confirmation`.
    pub beacon_switch: Confirmation,
    /// A BN identity → that BN's own secret (see `beacons::authenticate`).
    pub beacon_jwt_secrets: Vec<(String, Secret)>,
    pub jwt_secret: Option<Secret>,
    /// One slot per builder, in the order of `builders`.
    pub builder_jwt_secrets: Vec<Option<Secret>>,
    pub jwt_client_id: Option<String>,
    pub metrics_addr: Option<SocketAddr>,
    /// Where `builders` and the secrets came from, to read them again on SIGHUP.
    pub reload: ReloadSource,
    /// `--builder-ca`: extra root certificates (DER).
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
    pub beacon_jwt_secrets: Option<PathBuf>,
}

/// The part of the configuration a reload replaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reloaded {
    pub builders: Vec<Endpoint>,
    pub jwt_secret: Option<Secret>,
    pub builder_jwt_secrets: Vec<Option<Secret>>,
    pub beacon_jwt_secrets: Vec<(String, Secret)>,
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
pub type TokensCommand = Command<TokensServiceConfig>;

/// One clear line saying what is wrong. Never contains a secret: secret files are only ever
/// described by their path and the reason they were rejected.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl ConfigError {
    /// The same error, said of `what` (a flag, a file's line).
    fn context(self, what: impl fmt::Display) -> ConfigError {
        err!("{what}: {}", self.0)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// `args` excludes argv[0]. `env` looks up environment variables (tests pass a closure over a map).
pub fn parse(args: Vec<OsString>, env: Env) -> Result<Command, ConfigError> {
    parse_with(args, env, PROXY_FLAGS, build_config)
}

/// `jwt-tokens-service`: the same spellings and `LOG_LEVEL`/`LOG_JSON` as `sync-proxy`.
pub fn parse_tokens_service(args: Vec<OsString>, env: Env) -> Result<TokensCommand, ConfigError> {
    parse_with(args, env, TOKENS_FLAGS, build_tokens_config)
}

fn parse_with<C>(
    args: Vec<OsString>,
    env: Env,
    flags: &'static [flags::Flag],
    build: fn(&Settings) -> Result<C, ConfigError>,
) -> Result<Command<C>, ConfigError> {
    Ok(match parse_raw(args, flags)? {
        Command::Run(given) => Command::Run(build(&Settings { flags, given, env })?),
        Command::Help => Command::Help,
        Command::Version => Command::Version,
    })
}

/// Reads the builder list and the secret files (at start-up, and again on SIGHUP): blocking
/// file reads and name lookups, so the running proxy calls it on its helper thread (`resolve`).
pub fn read_reloadable(source: &ReloadSource) -> Result<Reloaded, ConfigError> {
    let builders = read_builders(&source.builders)?;
    let builder_jwt_secrets = match &source.builder_jwt_secrets {
        Some(path) => assign_builder_secrets(&builders, path)?,
        None => vec![None; builders.len()],
    };
    let jwt_secret = source.jwt_secret.as_deref();
    let beacons = source.beacon_jwt_secrets.as_deref();
    Ok(Reloaded {
        builders,
        jwt_secret: jwt_secret.map(|path| read_parsed(path, "--jwt-secret", Secret::from_hex)).transpose()?,
        builder_jwt_secrets,
        beacon_jwt_secrets: beacons
            .map(|path| read_parsed(path, "--beacon-jwt-secrets", parse_beacon_secrets))
            .transpose()?
            .unwrap_or_default(),
    })
}

impl Config {
    /// The secrets a beacon node's token may be signed with (`beacons::authenticate`).
    pub fn beacon_keys(&self) -> Keys {
        Keys { shared: self.jwt_secret.clone(), per_beacon: self.beacon_jwt_secrets.clone() }
    }

    /// The settings of a listener that forwards nothing (`jwt-tokens-service`): every limit at
    /// the proxy's default.
    pub fn serving_only(tokens: &TokensServiceConfig) -> Config {
        let defaults = Settings { flags: PROXY_FLAGS, given: Given::new(), env: &|_| None };
        let listen = (tokens.listen_text.clone(), tokens.listen);
        let reload = ReloadSource {
            builders: BuilderList::Flag(String::new()),
            jwt_secret: None,
            builder_jwt_secrets: None,
            beacon_jwt_secrets: None,
        };
        // The table's defaults are valid: `tests::the_defaults_serve_the_tokens_service` says so.
        let mut cfg = typed(&defaults, listen, reload, Reloaded::default()).expect("valid defaults");
        (cfg.log_level, cfg.log_json, cfg.max_body_bytes) = (tokens.log_level, tokens.log_json, 64 * 1024);
        cfg
    }
}

/// Settings are checked in a fixed order (the address, the builders and their secrets, then the
/// rest), so a command line with several mistakes always names the same one.
fn build_config(s: &Settings) -> Result<Config, ConfigError> {
    let listen = s.value("addr", parse_listen)?;
    let builders = match (s.path("builders-file"), s.text("builders")?.unwrap_or_default()) {
        (Some(_), text) if !text.trim().is_empty() => {
            return Err(err!(
                "--builders and --builders-file exclude each other: list the execution clients in one place"
            ))
        }
        (Some(path), _) => BuilderList::File(path),
        (None, text) => BuilderList::Flag(text),
    };
    let reload = ReloadSource {
        builders,
        jwt_secret: s.path("jwt-secret"),
        builder_jwt_secrets: s.path("builder-jwt-secrets"),
        beacon_jwt_secrets: s.path("beacon-jwt-secrets"),
    };
    let reloaded = read_reloadable(&reload)?;
    typed(s, listen, reload, reloaded)
}

/// The [`Config`] from the settings, given what needs more than a flag's text.
fn typed(
    s: &Settings,
    (listen_text, listen): (String, SocketAddr),
    reload: ReloadSource,
    reloaded: Reloaded,
) -> Result<Config, ConfigError> {
    let Reloaded { builders, jwt_secret, builder_jwt_secrets, beacon_jwt_secrets } = reloaded;
    let (log_level, log_json) = s.log()?;
    let proxies = parse_endpoint_list(&s.text("proxies")?.unwrap_or_default(), "--proxies")?;
    let request_timeout = s.get("request-timeout", parse_millis)?;
    let policies = [("primary", AnswerPolicy::Primary), ("safe", AnswerPolicy::Safe)];
    let answer_policy = s.value("answer-policy", |text| one_of(&policies, text))?;
    let answer_wait = s.value("answer-wait", parse_millis)?;
    // Shorter than the shortest timeout of the calls it gathers (newPayloadV5's 6 s, or
    // --request-timeout), so that the wait, not the timeout, ends a gathering.
    let longest_wait = request_timeout.unwrap_or(Duration::from_secs(6));
    if answer_policy == AnswerPolicy::Safe && answer_wait >= longest_wait {
        return Err(err!(
            "--answer-wait must be below {} ms with --answer-policy safe (the newPayload timeout)",
            longest_wait.as_millis()
        ));
    }
    let choices = [("primary", PayloadChoice::Primary), ("best-value", PayloadChoice::BestValue)];
    let switches = [("valid", Confirmation::ValidOnly), ("not-invalid", Confirmation::NotInvalid)];
    Ok(Config {
        listen,
        listen_text,
        builders,
        proxies,
        request_timeout,
        // Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS too, not only to 2000.
        proxy_request_timeout: s.value("proxy-request-timeout", parse_millis)?,
        log_level,
        log_json,
        mirror_mode: s.value("mirror-mode", parse_bool)?,
        max_body_bytes: s.value("max-body-bytes", parse_count)?,
        memory_budget_bytes: s.value("memory-budget-bytes", parse_count)?,
        max_connections: s.value("max-connections", parse_count)?,
        idle_timeout: s.value("idle-timeout", parse_millis)?,
        read_timeout: s.value("read-timeout", parse_millis)?,
        write_timeout: s.value("write-timeout", parse_millis)?,
        backlog_requests: s.value("backlog-requests", parse_count)?,
        backlog_bytes: s.value("backlog-bytes", parse_count)?,
        beacon_expiry: s.value("beacon-expiry", parse_millis)?,
        payload_choice: s.value("payload-choice", |text| one_of(&choices, text))?,
        answer_policy,
        answer_wait,
        beacon_switch: s.value("beacon-switch", |text| one_of(&switches, text))?,
        beacon_jwt_secrets,
        jwt_secret,
        builder_jwt_secrets,
        jwt_client_id: s.text("jwt-client-id")?,
        metrics_addr: s.get("metrics-addr", parse_listen)?.map(|(_, addr)| addr),
        reload,
        builder_ca: s.path("builder-ca").map(|path| read_builder_ca(&path)).transpose()?.unwrap_or_default(),
    })
}

fn build_tokens_config(s: &Settings) -> Result<TokensServiceConfig, ConfigError> {
    let (listen_text, listen) = s.value("addr", parse_listen)?;
    let path = s.path("config").unwrap_or_default();
    let entries = read_parsed(&path, "--config", parse_secret_map)?;
    if entries.is_empty() {
        let path = show_path(&path);
        return Err(err!(
            "--config file {path} has no entries: it needs a JSON object of name to hex secret"
        ));
    }
    let (log_level, log_json) = s.log()?;
    Ok(TokensServiceConfig {
        listen,
        listen_text,
        entries,
        client_id: s.text("client-id")?,
        log_level,
        log_json,
    })
}
