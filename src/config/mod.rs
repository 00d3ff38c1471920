//! Raw command line and environment → validated, typed [`Config`] (and [`TokensServiceConfig`]
//! for the `jwt-tokens-service` binary).
//!
//! Parsing happens in two steps, as in ripgrep: `flags` turns the arguments into raw flag values
//! with `lexopt`, then validation here turns those, the environment and the flag table's defaults
//! (`settings`) into typed values. Addresses are resolved here at start-up (blocking DNS is fine
//! then: `endpoints`), and secret files are read here (`files`); [`read_reloadable`] reads the
//! builder list and the secret files again for a SIGHUP, on the helper thread of `resolve`, which
//! also looks names up again while the proxy runs. The event loop itself never touches the file
//! system or DNS.
//!
//! Knows no mio, no sockets beyond resolving addresses, no HTTP, no JWT minting. Compatibility
//! with the Go flashbots/sync-proxy is described in `flags` (spellings) and `settings`
//! (environment variables).

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
mod test_util;

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::answer_policy::{AnswerPolicy, DEFAULT_ANSWER_WAIT};
use crate::beacons::{Confirmation, Keys};
use crate::jwt::Secret;
use crate::payload_choice::PayloadChoice;
pub use endpoints::{parse_endpoint, Endpoint};
use endpoints::{parse_endpoint_list, read_builders};
use files::{
    assign_builder_secrets, read_beacon_secrets, read_builder_ca, read_secret_file, read_secret_map,
    show_path,
};
pub use flags::{help_text, tokens_service_help_text};
use flags::{parse_raw, RawArgs, PROXY_FLAGS, TOKENS_FLAGS};
use settings::{parse_millis, Settings};

/// What a binary was asked to do: run with `C` (a [`Config`] for `sync-proxy`, a
/// [`TokensServiceConfig`] for `jwt-tokens-service`; raw flag values before validation), or print
/// its help or version.
// Built once at start-up and moved into the event loop, so the size of `Run` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<C = Config> {
    Run(C),
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
    /// `--payload-choice`: whose payload a proposer gets from getPayload.
    pub payload_choice: PayloadChoice,
    /// `--answer-policy`: what a beacon node is told about newPayload and forkchoiceUpdated.
    pub answer_policy: AnswerPolicy,
    /// `--answer-wait`: under `safe`, how long answers are gathered after the first decisive one.
    pub answer_wait: Duration,
    /// `--beacon-switch`: which EL answers let another BN become the best (see
    /// `beacons::Confirmation`).
    pub beacon_switch: Confirmation,
    /// `--beacon-jwt-secrets`: a BN identity → that BN's own secret (see `beacons::authenticate`).
    pub beacon_jwt_secrets: Vec<(String, Secret)>,
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
    pub beacon_jwt_secrets: Option<PathBuf>,
}

/// The part of the configuration a reload replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    pub builders: Vec<Endpoint>,
    pub jwt_secret: Option<Secret>,
    pub builder_jwt_secrets: Vec<Option<Secret>>,
    pub beacon_jwt_secrets: Vec<(String, Secret)>,
}

impl Config {
    /// The secrets a beacon node's token may be signed with (`beacons::authenticate`).
    pub fn beacon_keys(&self) -> Keys {
        Keys { shared: self.jwt_secret.clone(), per_beacon: self.beacon_jwt_secrets.clone() }
    }

    /// The settings of a listener that forwards nothing (the `jwt-tokens-service` binary runs the
    /// same event loop with no execution clients): every limit at its default.
    pub fn serving_only(tokens: &TokensServiceConfig) -> Config {
        let defaults = Settings::new(RawArgs::empty(PROXY_FLAGS), &|_| None);
        let millis = |name: &str| defaults.millis(name).unwrap_or(Duration::from_secs(1));
        let count = |name: &str| defaults.count(name).unwrap_or(1);
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
            beacon_switch: Confirmation::ValidOnly,
            answer_policy: AnswerPolicy::Primary,
            payload_choice: PayloadChoice::Primary,
            answer_wait: DEFAULT_ANSWER_WAIT,
            jwt_secret: None,
            builder_jwt_secrets: Vec::new(),
            beacon_jwt_secrets: Vec::new(),
            jwt_client_id: None,
            metrics_addr: None,
            reload: ReloadSource {
                builders: BuilderList::Flag(String::new()),
                jwt_secret: None,
                builder_jwt_secrets: None,
                beacon_jwt_secrets: None,
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

impl<C> Command<C> {
    /// Validates what `Run` carries; help and version need nothing more.
    fn and_then<D>(self, build: impl FnOnce(C) -> Result<D, ConfigError>) -> Result<Command<D>, ConfigError> {
        Ok(match self {
            Command::Run(raw) => Command::Run(build(raw)?),
            Command::Help => Command::Help,
            Command::Version => Command::Version,
        })
    }
}

/// `args` excludes argv[0]. `env` looks up environment variables (tests pass a closure over a map).
pub fn parse(args: Vec<OsString>, env: &dyn Fn(&str) -> Option<String>) -> Result<Command, ConfigError> {
    parse_raw(args, PROXY_FLAGS)?.and_then(|raw| build_config(&Settings::new(raw, env)))
}

/// jwt-tokens-service: flags -addr (default "localhost:1337"), -config (default "config.json": a
/// JSON object name -> hex secret, parsed with jwt::parse_secret_map), -client-id, -loglevel,
/// -json; same single/double dash handling. `LOG_LEVEL` and `LOG_JSON` supply defaults as for
/// `sync-proxy`.
pub fn parse_tokens_service(
    args: Vec<OsString>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TokensCommand, ConfigError> {
    parse_raw(args, TOKENS_FLAGS)?.and_then(|raw| build_tokens_config(&Settings::new(raw, env)))
}

/// Reads the builder list and the secret files (at start-up, and again on SIGHUP): blocking
/// file reads and name lookups, so the running proxy calls it on its helper thread (`resolve`).
pub fn read_reloadable(source: &ReloadSource) -> Result<Reloaded, ConfigError> {
    let builders = read_builders(&source.builders)?;
    let builder_jwt_secrets = match &source.builder_jwt_secrets {
        Some(path) => assign_builder_secrets(&builders, path)?,
        None => vec![None; builders.len()],
    };
    let jwt_secret =
        source.jwt_secret.as_deref().map(|path| read_secret_file(path, "--jwt-secret")).transpose()?;
    let beacon_jwt_secrets = match &source.beacon_jwt_secrets {
        Some(path) => read_beacon_secrets(path)?,
        None => Vec::new(),
    };
    Ok(Reloaded { builders, jwt_secret, builder_jwt_secrets, beacon_jwt_secrets })
}

/// Settings are checked in a fixed order (address, builders and their secrets, proxies, timeouts,
/// logging, metrics, mirror mode, CA, limits): a command line with several mistakes always names
/// the same one.
fn build_config(s: &Settings) -> Result<Config, ConfigError> {
    let (listen_text, listen) = listen_addr(s)?;
    let builders_text = s.text("builders")?.unwrap_or("");
    let builders = match s.path("builders-file") {
        Some(_) if !builders_text.trim().is_empty() => {
            return Err(err!(
                "--builders and --builders-file exclude each other: list the execution clients in one place"
            ))
        }
        Some(path) => BuilderList::File(path),
        None => BuilderList::Flag(builders_text.to_owned()),
    };
    let reload = ReloadSource {
        builders,
        jwt_secret: s.path("jwt-secret"),
        builder_jwt_secrets: s.path("builder-jwt-secrets"),
        beacon_jwt_secrets: s.path("beacon-jwt-secrets"),
    };
    let Reloaded { builders, jwt_secret, builder_jwt_secrets, beacon_jwt_secrets } =
        read_reloadable(&reload)?;
    let proxies = parse_endpoint_list(s.text("proxies")?.unwrap_or(""), "--proxies")?;
    let request_timeout = s.number("request-timeout", parse_millis)?;
    // Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS too, not only to 2000.
    let proxy_request_timeout = s.millis("proxy-request-timeout")?;
    let beacon_expiry = s.millis("beacon-expiry")?;
    let beacon_switch = match s.text("beacon-switch")?.unwrap_or(s.default("beacon-switch")) {
        "valid" => Confirmation::ValidOnly,
        "not-invalid" => Confirmation::NotInvalid,
        other => return Err(err!("--beacon-switch must be valid or not-invalid, not {other:?}")),
    };
    let answer_policy = AnswerPolicy::parse(s.text("answer-policy")?.unwrap_or(s.default("answer-policy")))
        .map_err(|why| err!("{why}"))?;
    let answer_wait = s.millis("answer-wait")?;
    let payload_choice =
        PayloadChoice::parse(s.text("payload-choice")?.unwrap_or(s.default("payload-choice")))
            .map_err(|why| err!("{why}"))?;
    // Shorter than the shortest timeout of the calls it gathers (newPayloadV5's 6 s, or
    // --request-timeout), so that the wait, not the timeout, ends a gathering.
    let longest_wait = request_timeout.unwrap_or(Duration::from_secs(6));
    let safe = answer_policy == AnswerPolicy::Safe;
    if answer_wait.is_zero() || (safe && answer_wait >= longest_wait) {
        return Err(err!(
            "--answer-wait must be positive and, with --answer-policy safe, below {} ms (the newPayload \
             timeout)",
            longest_wait.as_millis()
        ));
    }
    let (log_level, log_json) = s.log()?;
    let metrics_addr = s.listen("metrics-addr")?.map(|(_, addr)| addr);
    let mirror_mode = s.boolean("mirror-mode")?;
    let builder_ca = s.path("builder-ca").map(|path| read_builder_ca(&path)).transpose()?.unwrap_or_default();
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
        max_body_bytes: s.count("max-body-bytes")?,
        memory_budget_bytes: s.count("memory-budget-bytes")?,
        max_connections: s.count("max-connections")?,
        idle_timeout: s.millis("idle-timeout")?,
        read_timeout: s.millis("read-timeout")?,
        write_timeout: s.millis("write-timeout")?,
        backlog_requests: s.count("backlog-requests")?,
        backlog_bytes: s.count("backlog-bytes")?,
        beacon_expiry,
        answer_policy,
        answer_wait,
        payload_choice,
        beacon_switch,
        jwt_secret,
        builder_jwt_secrets,
        beacon_jwt_secrets,
        jwt_client_id: non_empty(s.text("jwt-client-id")?),
        metrics_addr,
        reload,
        builder_ca,
    })
}

fn build_tokens_config(s: &Settings) -> Result<TokensServiceConfig, ConfigError> {
    let (listen_text, listen) = listen_addr(s)?;
    let path = s.path("config").unwrap_or_else(|| PathBuf::from(s.default("config")));
    let entries = read_secret_map(&path, "--config")?;
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
        client_id: non_empty(s.text("client-id")?),
        log_level,
        log_json,
    })
}

/// `--addr`, which always has a default.
fn listen_addr(s: &Settings) -> Result<(String, SocketAddr), ConfigError> {
    s.listen("addr")?.ok_or_else(|| err!("--addr: no address to listen on"))
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
        let c = run(&["--builders", BUILDER]);
        let ms = Duration::from_millis;
        assert_eq!((c.listen, c.listen_text.as_str()), (loopback(25590), "localhost:25590"));
        assert_eq!((c.builders.len(), c.builders[0].name.as_str(), c.proxies.len()), (1, BUILDER, 0));
        assert_eq!(
            (c.request_timeout, c.proxy_request_timeout, c.beacon_expiry),
            (None, ms(2000), ms(12_000))
        );
        assert_eq!((c.idle_timeout, c.read_timeout, c.write_timeout), (ms(60_000), ms(30_000), ms(10_000)));
        let limits = (c.max_body_bytes, c.max_connections, c.backlog_requests, c.backlog_bytes);
        assert_eq!(limits, (134_217_728, 1024, 512, 268_435_456));
        assert_eq!((c.log_level, c.log_json, c.mirror_mode), (log::LevelFilter::Info, false, false));
        assert_eq!((c.jwt_secret, c.builder_jwt_secrets, c.jwt_client_id), (None, vec![None], None));
        assert_eq!(c.metrics_addr, None);
    }

    #[test]
    fn tokens_service_flags_in_every_spelling() {
        let file = secret_map(&[("alpha", SECRET_HEX), ("beta", OTHER_SECRET_HEX)]);
        let base = ["-addr", "127.0.0.1:0", "-config", file.arg()];
        let config = ran(&base, tokens(&base, &[]));
        assert_eq!((config.listen, config.listen_text.as_str()), (loopback(0), "127.0.0.1:0"));
        let names: Vec<&str> = config.entries.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"]);
        assert_eq!(
            (config.client_id, config.log_level, config.log_json),
            (None, log::LevelFilter::Info, false)
        );

        type Check = fn(&TokensServiceConfig) -> bool;
        let table: &[(&str, &str, Check)] = &[
            ("client-id", "cl-1", |c| c.client_id.as_deref() == Some("cl-1")),
            ("loglevel", "debug", |c| c.log_level == log::LevelFilter::Debug),
            ("addr", "127.0.0.1:7", |c| c.listen == loopback(7)),
            ("config", file.arg(), |c| c.entries.len() == 2),
        ];
        let json = [vec!["-json".to_owned()], vec!["--json=true".to_owned()]]
            .map(|s| (s, (|c| c.log_json) as Check));
        let spelled = table
            .iter()
            .flat_map(|(flag, value, check)| spellings(flag, value).into_iter().map(|s| (s, *check)));
        for (spelling, check) in spelled.chain(json) {
            let args = joined(&base, &spelling);
            let config = ran(&args, tokens(&args, &[]));
            assert!(check(&config), "{args:?} gave {config:?}");
        }
    }

    #[test]
    fn tokens_service_environment_and_defaults() {
        let file = secret_map(&[("alpha", SECRET_HEX)]);
        let env = [("LOG_LEVEL", "trace"), ("LOG_JSON", "yes")];
        let args = ["-addr=127.0.0.1:0", "-config", file.arg()];
        let config = ran(&args, tokens(&args, &env));
        assert_eq!((config.log_level, config.log_json), (log::LevelFilter::Trace, true));
    }

    #[test]
    fn tokens_service_help_version_and_errors() {
        for (args, expected) in
            [(&["-h"][..], Command::Help), (&["-help"], Command::Help), (&["--version"], Command::Version)]
        {
            assert_eq!(tokens(args, &[]).unwrap(), expected);
        }
        let file = secret_map(&[("alpha", SECRET_HEX)]);
        let empty = TempFile::new("{}");
        let invalid = secret_map(&[("alpha", &SECRET_HEX[..10])]);
        let missing = format!("{}-missing", file.arg());
        let table: &[(&[&str], &[&str])] = &[
            (&["-builders", "x", "-config", file.arg()], &["unknown flag", "--builders"]),
            (&["-config", &missing], &["cannot read --config file", &missing]),
            (&["-config", empty.arg()], &["no entries", empty.arg()]),
            (&["-config", invalid.arg()], &["invalid --config file", invalid.arg()]),
            (&["-config", file.arg(), "-addr", "nowhere"], &["bad address", "--addr"]),
            (&["-config", file.arg(), "-loglevel=loud"], &["bad log level"]),
            (&["-config", file.arg(), "stray"], &["unexpected argument"]),
            (&["-config"], &["missing value", "--config"]),
        ];
        for (args, needles) in table {
            let message = tokens(args, &[]).unwrap_err();
            assert_mentions(&message, needles);
            assert!(!message.contains(&SECRET_HEX[..10]), "{message}");
        }
    }

    #[test]
    fn trust_flags_parse_and_bad_values_are_named() {
        let c = run(&with_builder(&[]));
        assert_eq!(
            (c.answer_policy, c.answer_wait, c.beacon_switch),
            (AnswerPolicy::Primary, DEFAULT_ANSWER_WAIT, Confirmation::ValidOnly)
        );
        assert!(c.beacon_jwt_secrets.is_empty());
        let c = run(&with_builder(&[
            "--answer-policy",
            "safe",
            "--answer-wait",
            "250",
            "--beacon-switch",
            "not-invalid",
        ]));
        assert_eq!(
            (c.answer_policy, c.answer_wait, c.beacon_switch),
            (AnswerPolicy::Safe, Duration::from_millis(250), Confirmation::NotInvalid)
        );
        let file = secret_map(&[("bn-a", "11".repeat(32).as_str())]);
        let c = run(&with_builder(&["--beacon-jwt-secrets", file.arg()]));
        assert_eq!(c.beacon_jwt_secrets.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["bn-a"]);
        let bad_name = secret_map(&[("bn a", "11".repeat(32).as_str())]);
        assert_mentions(
            &error(&with_builder(&["--beacon-jwt-secrets", bad_name.arg()])),
            &["--beacon-jwt-secrets", "not an identity"],
        );
        assert_mentions(&error(&with_builder(&["--answer-policy", "vote"])), &["--answer-policy", "vote"]);
        assert_mentions(&error(&with_builder(&["--beacon-switch", "any"])), &["--beacon-switch", "any"]);
        assert_eq!(
            run(&with_builder(&["--payload-choice", "best-value"])).payload_choice,
            PayloadChoice::BestValue
        );
        assert_mentions(&error(&with_builder(&["--payload-choice", "max"])), &["--payload-choice", "max"]);
        let too_long = ["--answer-policy", "safe", "--request-timeout", "500", "--answer-wait", "500"];
        assert_mentions(&error(&with_builder(&too_long)), &["--answer-wait", "500 ms"]);
        // Without safe the wait is unused, so a short --request-timeout is no conflict.
        run(&with_builder(&["--request-timeout", "100"]));
    }
}
