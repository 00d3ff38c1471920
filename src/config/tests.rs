//! The command line of both binaries, one row per case: arguments, environment, and the value
//! they must give or the words their error must contain. Files are temporary, and secrets are
//! easy to spot in anything that leaks them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoints::{builders_file_entries, split_endpoint};
use super::flags::{find, single_dash_to_double, Flag};
use super::*;
use log::LevelFilter::{Debug, Error, Info, Off, Trace, Warn};

const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_SECRET_HEX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const BUILDER: &str = "127.0.0.1:8551";

type Env<'a> = &'a [(&'a str, &'a str)];
type Check = fn(&Config) -> bool;

fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Runs a parser with `env` as the whole environment; an error must be one line.
fn parse_in<C>(
    parse: fn(Vec<OsString>, super::Env) -> Result<Command<C>, ConfigError>,
    args: &[&str],
    env: Env,
) -> Result<Command<C>, String> {
    let env = |var: &str| env.iter().find(|(name, _)| *name == var).map(|(_, value)| value.to_string());
    parse(os_args(args), &env).map_err(|ConfigError(message)| {
        assert!(!message.contains('\n'), "not one line: {message:?}");
        message
    })
}

/// What `Run` carries, or a panic naming the arguments.
#[track_caller]
fn ran<C: fmt::Debug>(args: &[&str], parsed: Result<Command<C>, String>) -> C {
    match parsed {
        Ok(Command::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

#[track_caller]
fn run(args: &[&str], env: Env) -> Config {
    ran(args, parse_in(parse, args, env))
}

#[track_caller]
fn error(args: &[&str], env: Env) -> String {
    match parse_in(parse, args, env) {
        Err(message) => message,
        Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

/// `-builders BUILDER` followed by `args`.
fn with_builder<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["-builders", BUILDER][..], args].concat()
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

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// The four spellings Go's flag package accepts for a flag with a value.
fn spellings(flag: &str, value: &str) -> [Vec<String>; 4] {
    let (one, two, value) = (format!("-{flag}"), format!("--{flag}"), value.to_owned());
    [
        vec![format!("{one}={value}")],
        vec![format!("{two}={value}")],
        vec![one, value.clone()],
        vec![two, value],
    ]
}

/// `base` followed by `more`, as `&str`s.
fn joined<'a>(base: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    base.iter().copied().chain(more.iter().map(String::as_str)).collect()
}

/// A file under the temp dir, removed when dropped, so failing tests clean up too.
struct TempFile(PathBuf);

impl TempFile {
    fn new(content: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sync-proxy-config-test-{}-{n}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A secrets map file: `{"key": "hex", ...}`.
fn secret_map(pairs: &[(&str, &str)]) -> TempFile {
    let entries: Vec<String> = pairs.iter().map(|(key, hex)| format!("\"{key}\": \"{hex}\"")).collect();
    TempFile::new(&format!("{{{}}}", entries.join(", ")))
}

const ENV: Env = &[
    ("PROXY_LISTEN_ADDR", "127.0.0.1:0"),
    ("BUILDER_TIMEOUT_MS", "3000"),
    ("LOG_LEVEL", "warning"),
    ("LOG_JSON", "1"),
    ("BEACON_EXPIRY_MS", "24000"),
];

/// Arguments after `-builders BUILDER`, the environment, and a check on the config they give.
#[rustfmt::skip]
const VALUES: &[(&[&str], Env, Check)] = &[
    // Defaults without environment.
    (&[], &[], |c| (c.listen, c.listen_text.as_str(), c.builders.len(), c.builders[0].name.as_str(), c.proxies.len())
        == (loopback(25590), "localhost:25590", 1, BUILDER, 0)),
    (&[], &[], |c| (c.request_timeout, c.proxy_request_timeout, c.beacon_expiry, c.answer_wait)
        == (None, ms(2000), ms(12_000), ms(1000))),
    (&[], &[], |c| (c.idle_timeout, c.read_timeout, c.write_timeout) == (ms(60_000), ms(30_000), ms(10_000))),
    (&[], &[], |c| (c.max_body_bytes, c.memory_budget_bytes, c.max_connections, c.backlog_requests, c.backlog_bytes)
        == (134_217_728, 1 << 30, 1024, 512, 268_435_456)),
    (&[], &[], |c| (c.log_level, c.log_json, c.mirror_mode, c.metrics_addr) == (Info, false, false, None)),
    (&[], &[], |c| (&c.jwt_secret, &c.builder_jwt_secrets, &c.jwt_client_id) == (&None, &vec![None], &None)),
    (&[], &[], |c| (c.answer_policy, c.payload_choice, c.beacon_switch, c.beacon_jwt_secrets.len())
        == (AnswerPolicy::Primary, PayloadChoice::Primary, Confirmation::ValidOnly, 0)),
    // The environment gives defaults (Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS too).
    (&[], ENV, |c| (c.listen, c.listen_text.as_str(), c.request_timeout, c.proxy_request_timeout)
        == (loopback(0), "127.0.0.1:0", Some(ms(3000)), ms(3000))),
    (&[], ENV, |c| (c.log_level, c.log_json, c.beacon_expiry) == (Warn, true, ms(24_000))),
    // Flags override it.
    (&["-addr=127.0.0.1:1", "-request-timeout=100", "-proxy-request-timeout=200", "-loglevel=error", "-json=false",
       "-beacon-expiry=300"], ENV, |c| (c.listen, c.request_timeout, c.proxy_request_timeout, c.log_level, c.log_json,
       c.beacon_expiry) == (loopback(1), Some(ms(100)), ms(200), Error, false, ms(300))),
    // Numbers in the environment that Go's strconv.Atoi refuses are ignored.
    (&[], &[("BUILDER_TIMEOUT_MS", "abc"), ("BEACON_EXPIRY_MS", "abc")], |c| (c.request_timeout, c.proxy_request_timeout, c.beacon_expiry) == (None, ms(2000), ms(12_000))),
    (&[], &[("BUILDER_TIMEOUT_MS", "0"), ("BEACON_EXPIRY_MS", "0")], |c| (c.request_timeout, c.beacon_expiry) == (None, ms(12_000))),
    (&[], &[("BUILDER_TIMEOUT_MS", "-5"), ("BEACON_EXPIRY_MS", "-5")], |c| (c.request_timeout, c.beacon_expiry) == (None, ms(12_000))),
    (&[], &[("BUILDER_TIMEOUT_MS", "1.5"), ("BEACON_EXPIRY_MS", "1.5")], |c| (c.request_timeout, c.beacon_expiry) == (None, ms(12_000))),
    (&[], &[("BUILDER_TIMEOUT_MS", ""), ("BEACON_EXPIRY_MS", "")], |c| (c.request_timeout, c.beacon_expiry) == (None, ms(12_000))),
    // Empty variables count as unset.
    (&[], &[("PROXY_LISTEN_ADDR", ""), ("LOG_LEVEL", "")], |c| (c.listen_text.as_str(), c.log_level) == ("localhost:25590", Info)),
    // MIRROR_MODE and METRICS_ADDR as upstream reads them; flags override them.
    (&[], &[("MIRROR_MODE", "1")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "t")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "T")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "true")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "TRUE")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "True")], |c| c.mirror_mode),
    (&[], &[("MIRROR_MODE", "0")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "f")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "F")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "false")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "FALSE")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "False")], |c| !c.mirror_mode),
    (&[], &[("MIRROR_MODE", "")], |c| !c.mirror_mode),
    (&[], &[("METRICS_ADDR", "127.0.0.1:9551")], |c| c.metrics_addr == Some(loopback(9551))),
    (&[], &[("METRICS_ADDR", "")], |c| c.metrics_addr.is_none()),
    (&["-mirror-mode=false", "--metrics-addr", "127.0.0.1:9552"], &[("MIRROR_MODE", "true"), ("METRICS_ADDR", "127.0.0.1:9551")],
        |c| (c.mirror_mode, c.metrics_addr) == (false, Some(loopback(9552)))),
    (&["--mirror-mode"], &[("MIRROR_MODE", "false")], |c| c.mirror_mode),
    (&["-mirror-mode=false"], &[("MIRROR_MODE", "yes")], |c| !c.mirror_mode),
    // Any non-empty LOG_JSON turns JSON logging on, as in Go.
    (&[], &[("LOG_JSON", "true")], |c| c.log_json),
    (&[], &[("LOG_JSON", "false")], |c| c.log_json),
    (&[], &[("LOG_JSON", "x")], |c| c.log_json),
    (&[], &[("LOG_JSON", "")], |c| !c.log_json),
    // Log levels as logrus names them; a flag makes a bad LOG_LEVEL irrelevant.
    (&["--loglevel=trace"], &[], |c| c.log_level == Trace),
    (&["--loglevel=debug"], &[], |c| c.log_level == Debug),
    (&["--loglevel=info"], &[], |c| c.log_level == Info),
    (&["--loglevel=INFO"], &[], |c| c.log_level == Info),
    (&["--loglevel="], &[], |c| c.log_level == Info),
    (&["--loglevel=warn"], &[], |c| c.log_level == Warn),
    (&["--loglevel=warning"], &[], |c| c.log_level == Warn),
    (&["--loglevel=error"], &[], |c| c.log_level == Error),
    (&["--loglevel=fatal"], &[], |c| c.log_level == Error),
    (&["--loglevel=panic"], &[], |c| c.log_level == Error),
    (&["--loglevel=off"], &[], |c| c.log_level == Off),
    (&["-loglevel=debug"], &[("LOG_LEVEL", "loud")], |c| c.log_level == Debug),
    // Listen addresses: IPv4 first, ":PORT" is every interface.
    (&["-addr", "127.0.0.1:0"], &[], |c| (c.listen, c.listen_text.as_str()) == (loopback(0), "127.0.0.1:0")),
    (&["-addr", "localhost:0"], &[], |c| (c.listen, c.listen_text.as_str()) == (loopback(0), "localhost:0")),
    (&["-addr", ":0"], &[], |c| c.listen.to_string() == "0.0.0.0:0"),
    (&["-addr", "[::1]:0"], &[], |c| c.listen.to_string() == "[::1]:0"),
    (&["-addr", "0.0.0.0:25590"], &[], |c| c.listen.to_string() == "0.0.0.0:25590"),
    // Booleans as Go's flag package reads them.
    (&["-json", "-mirror-mode"], &[], |c| c.log_json && c.mirror_mode),
    (&["--json", "--mirror-mode"], &[], |c| c.log_json && c.mirror_mode),
    (&["-json=true", "--mirror-mode=true"], &[], |c| c.log_json && c.mirror_mode),
    (&["-json=1", "-mirror-mode=t"], &[], |c| c.log_json && c.mirror_mode),
    (&["-json=TRUE", "-mirror-mode=T"], &[], |c| c.log_json && c.mirror_mode),
    (&["-json=false", "--mirror-mode=false"], &[], |c| !c.log_json && !c.mirror_mode),
    (&["--json=false", "-mirror-mode=0"], &[], |c| !c.log_json && !c.mirror_mode),
    (&["-json=0", "-mirror-mode=F"], &[], |c| !c.log_json && !c.mirror_mode),
    (&["-json=F", "-mirror-mode=False"], &[], |c| !c.log_json && !c.mirror_mode),
    (&["-json=False", "-mirror-mode=FALSE"], &[], |c| !c.log_json && !c.mirror_mode),
    // The last occurrence of a flag wins.
    (&["-builders", "127.0.0.1:1", "--loglevel=error", "-builders=127.0.0.1:2", "-loglevel", "trace", "-json", "-json=false"],
        &[], |c| (c.builders[0].name.as_str(), c.log_level, c.log_json) == ("127.0.0.1:2", Trace, false)),
    // A value that looks like a flag is kept; an empty client id means none.
    (&["-jwt-client-id", "-abc"], &[], |c| c.jwt_client_id.as_deref() == Some("-abc")),
    (&["-jwt-client-id="], &[], |c| c.jwt_client_id.is_none()),
    // Answer policies and the beacon switch.
    (&["--answer-policy", "safe", "--answer-wait", "250", "--beacon-switch", "not-invalid"], &[],
        |c| (c.answer_policy, c.answer_wait, c.beacon_switch) == (AnswerPolicy::Safe, ms(250), Confirmation::NotInvalid)),
    (&["--payload-choice", "best-value"], &[], |c| c.payload_choice == PayloadChoice::BestValue),
    // Without safe the wait is unused, so a short --request-timeout is no conflict.
    (&["--request-timeout", "100"], &[], |c| c.answer_wait > c.request_timeout.unwrap()),
    // Builders keep their order and skip empty entries, as Go's parseURLs.
    (&["--builders", " 127.0.0.1:1 ,, 127.0.0.2:2,", "--proxies", ", ,"], &[], |c| c.proxies.is_empty()
        && c.builders.iter().map(|b| b.name.as_str()).eq(["127.0.0.1:1", "127.0.0.2:2"])),
];

#[test]
fn values_from_flags_environment_and_defaults() {
    for (args, env, check) in VALUES {
        let config = run(&with_builder(args), env);
        assert!(check(&config), "{args:?} {env:?} gave {config:?}");
    }
}

#[test]
fn every_value_flag_in_every_spelling() {
    let jwt = TempFile::new(SECRET_HEX);
    let map = secret_map(&[(BUILDER, OTHER_SECRET_HEX)]);
    let table: &[(&str, &str, Check)] = &[
        ("addr", "127.0.0.1:0", |c| c.listen == loopback(0) && c.listen_text == "127.0.0.1:0"),
        ("builders", "127.0.0.1:1,127.0.0.2:2", |c| {
            c.builders.len() == 2 && c.builders[1].name == "127.0.0.2:2" && c.builder_jwt_secrets.len() == 2
        }),
        ("proxies", "127.0.0.1:3", |c| c.proxies.len() == 1 && c.proxies[0].url == "http://127.0.0.1:3/"),
        ("request-timeout", "1500", |c| c.request_timeout == Some(ms(1500))),
        ("proxy-request-timeout", "250", |c| c.proxy_request_timeout == ms(250)),
        ("loglevel", "debug", |c| c.log_level == Debug),
        ("max-body-bytes", "1048576", |c| c.max_body_bytes == 1_048_576),
        ("memory-budget-bytes", "65536", |c| c.memory_budget_bytes == 65536),
        ("max-connections", "7", |c| c.max_connections == 7),
        ("idle-timeout", "5000", |c| c.idle_timeout == ms(5000)),
        ("read-timeout", "4000", |c| c.read_timeout == ms(4000)),
        ("write-timeout", "3000", |c| c.write_timeout == ms(3000)),
        ("backlog-requests", "9", |c| c.backlog_requests == 9),
        ("backlog-bytes", "4096", |c| c.backlog_bytes == 4096),
        ("beacon-expiry", "6000", |c| c.beacon_expiry == ms(6000)),
        ("answer-wait", "700", |c| c.answer_wait == ms(700)),
        ("answer-policy", "safe", |c| c.answer_policy == AnswerPolicy::Safe),
        ("payload-choice", "best-value", |c| c.payload_choice == PayloadChoice::BestValue),
        ("beacon-switch", "not-invalid", |c| c.beacon_switch == Confirmation::NotInvalid),
        ("jwt-client-id", "proxy-1", |c| c.jwt_client_id.as_deref() == Some("proxy-1")),
        ("metrics-addr", "127.0.0.1:9090", |c| c.metrics_addr == Some(loopback(9090))),
        ("jwt-secret", jwt.arg(), |c| c.jwt_secret == Some(secret(SECRET_HEX))),
        ("builder-jwt-secrets", map.arg(), |c| c.builder_jwt_secrets == [Some(secret(OTHER_SECRET_HEX))]),
    ];
    for (flag, value, check) in table {
        for spelling in spellings(flag, value) {
            let args = joined(&["--builders", BUILDER], &spelling);
            let config = run(&args, &[]);
            assert!(check(&config), "{args:?} gave {config:?}");
        }
    }
    // A 0x prefix and white space around the secret are fine.
    let file = TempFile::new(&format!("  0x{SECRET_HEX}\n"));
    assert_eq!(run(&with_builder(&["-jwt-secret", file.arg()]), &[]).jwt_secret, Some(secret(SECRET_HEX)));
}

#[test]
fn errors_name_the_flag_or_variable_and_the_value() {
    let almost = &SECRET_HEX[..60];
    let missing = std::env::temp_dir().join(format!("sync-proxy-config-test-missing-{}", std::process::id()));
    let missing = missing.to_str().unwrap();
    let (jwt_almost, map_almost, map_not_json) =
        (TempFile::new(almost), secret_map(&[(BUILDER, almost)]), TempFile::new(SECRET_HEX));
    let bad_bn = secret_map(&[("bn a", "11".repeat(32).as_str())]);
    let mut rows: Vec<(Vec<&str>, Env, Vec<&str>)> = vec![
        // Bad values in the environment name their variable.
        (vec![], &[("LOG_LEVEL", "loud")], vec!["not a log level", "LOG_LEVEL", "--loglevel"]),
        (vec![], &[("METRICS_ADDR", "nowhere")], vec!["METRICS_ADDR", "--metrics-addr", "nowhere"]),
        (vec![], &[("PROXY_LISTEN_ADDR", "127.0.0.1")], vec!["not an address", "PROXY_LISTEN_ADDR"]),
        (vec![], &[("MIRROR_MODE", "yes")], vec!["MIRROR_MODE", "--mirror-mode", "true or false"]),
        (vec![], &[("MIRROR_MODE", "on")], vec!["MIRROR_MODE", "--mirror-mode", "true or false"]),
        (vec![], &[("MIRROR_MODE", " true")], vec!["MIRROR_MODE", "--mirror-mode", "true or false"]),
        (vec![], &[("MIRROR_MODE", "2")], vec!["MIRROR_MODE", "--mirror-mode", "true or false"]),
        // Bad flag values.
        (vec!["--loglevel", "loud"], &[], vec!["not a log level", "\"loud\"", "--loglevel"]),
        (vec!["--idle-timeout=31536000001"], &[], vec!["--idle-timeout", "31536000001"]),
        (vec!["--answer-policy", "vote"], &[], vec!["--answer-policy", "\"vote\"", "primary or safe"]),
        (vec!["--beacon-switch", "any"], &[], vec!["--beacon-switch", "\"any\"", "valid or not-invalid"]),
        (vec!["--payload-choice", "max"], &[], vec!["--payload-choice", "\"max\"", "primary or best-value"]),
        (
            vec!["--answer-policy", "safe", "--request-timeout", "500", "--answer-wait", "500"],
            &[],
            vec!["--answer-wait", "500 ms"],
        ),
        (vec!["--beacon-jwt-secrets", bad_bn.arg()], &[], vec!["--beacon-jwt-secrets", "not an identity"]),
        // Bad command lines.
        (vec!["-json=maybe"], &[], vec!["invalid boolean", "--json"]),
        (vec!["--json="], &[], vec!["invalid boolean"]),
        (vec!["--mirror-mode=yes"], &[], vec!["invalid boolean", "--mirror-mode"]),
        // Go reads "-json false" as -json followed by a positional argument.
        (vec!["-json", "false"], &[], vec!["unexpected argument", "false"]),
        (vec!["-bogus"], &[], vec!["unknown flag", "--bogus"]),
        (vec!["--bogus=1"], &[], vec!["unknown flag", "--bogus"]),
        (vec!["-x"], &[], vec!["unknown flag", "-x"]),
        (vec!["--builder", BUILDER], &[], vec!["unknown flag", "--builder"]),
        // A jwt-tokens-service flag is not a sync-proxy flag.
        (vec!["-config", "x"], &[], vec!["unknown flag", "--config"]),
        (vec!["stray"], &[], vec!["unexpected argument"]),
        (vec!["-"], &[], vec!["unexpected argument"]),
        (vec!["--", "--addr", "127.0.0.1:0"], &[], vec!["unexpected argument"]),
        // "-5" is a short option to lexopt.
        (vec!["-5"], &[], vec!["unknown flag -5"]),
        // Entries of --builders and --proxies name their flag.
        (
            vec!["--builders", "127.0.0.1:1,ws://127.0.0.1:2"],
            &[],
            vec!["--builders", "only http://", "ws://127.0.0.1:2"],
        ),
        (vec!["--proxies", "127.0.0.1:x"], &[], vec!["--proxies", "invalid port", "127.0.0.1:x"]),
        // Secret files are named, never their content.
        (vec!["--jwt-secret", missing], &[], vec!["cannot read", "--jwt-secret", missing]),
        (vec!["--builder-jwt-secrets", missing], &[], vec!["cannot read", "--builder-jwt-secrets", missing]),
        (vec!["--jwt-secret", jwt_almost.arg()], &[], vec!["invalid --jwt-secret file", jwt_almost.arg()]),
        (
            vec!["--builder-jwt-secrets", map_almost.arg()],
            &[],
            vec!["invalid --builder-jwt-secrets file", map_almost.arg()],
        ),
        (vec!["--builder-jwt-secrets", map_not_json.arg()], &[], vec!["invalid --builder-jwt-secrets file"]),
    ];
    let millis =
        ["request-timeout", "proxy-request-timeout", "idle-timeout", "read-timeout", "write-timeout"];
    let counts =
        ["max-body-bytes", "memory-budget-bytes", "max-connections", "backlog-requests", "backlog-bytes"];
    let numbers: Vec<String> = (millis.iter().chain(&["beacon-expiry", "answer-wait"]).chain(&counts))
        .flat_map(|flag| {
            ["0", "abc", "-1", "1.5", "", "1e3", "99999999999999999999999"].map(|v| format!("--{flag}={v}"))
        })
        .collect();
    let addrs: Vec<String> = ["", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "::1:0", "a b:1"]
        .iter()
        .flat_map(|bad| [format!("-addr={bad}"), format!("-metrics-addr={bad}")])
        .collect();
    let missing_values: Vec<String> = PROXY_FLAGS
        .iter()
        .filter(|f| f.value.is_some())
        .flat_map(|f| [format!("-{}", f.name), format!("--{}", f.name)])
        .collect();
    for arg in numbers.iter().chain(&addrs) {
        let (flag, value) = arg.trim_start_matches('-').split_once('=').unwrap();
        let needles = vec![&arg[..arg.find('=').unwrap()], "invalid value", flag, value];
        rows.push((vec![arg], &[], needles));
    }
    for arg in &missing_values {
        rows.push((vec![arg], &[], vec!["missing value", arg.trim_start_matches('-')]));
    }
    for (args, env, needles) in &rows {
        let message = error(&with_builder(args), env);
        assert_mentions(&message, needles);
        for content in [almost, &SECRET_HEX[..10]] {
            assert!(!message.contains(content), "{message}");
        }
    }
}

#[test]
fn builders_and_builders_files() {
    for args in [&[][..], &["--builders", ""], &["--builders", " , ,"], &["--proxies", BUILDER]] {
        assert_eq!(error(args, &[]), "no builders given: use --builders host:port[,host:port…]", "{args:?}");
    }
    let text = "# primary first\n127.0.0.1:8551\n\n  http://127.0.0.1:8552/  # spare\n127.0.0.1:8553,127.0.0.1:8554\n";
    let expected =
        [(2, "127.0.0.1:8551"), (4, "http://127.0.0.1:8552/"), (5, "127.0.0.1:8553"), (5, "127.0.0.1:8554")];
    assert_eq!(builders_file_entries(text), expected);
    let file = TempFile::new("# ELs\n127.0.0.1:8552\n127.0.0.1:8551\n");
    let config = run(&["--builders-file", file.arg()], &[]);
    assert!(config.builders.iter().map(|b| b.name.as_str()).eq(["127.0.0.1:8552", "127.0.0.1:8551"]));
    assert_eq!(config.reload.builders, BuilderList::File(file.0.clone()));
    // Both at once, a bad line, an empty or a missing file are refused.
    let (bad, empty) =
        (TempFile::new("127.0.0.1:8551\n\nhttps://el:8551\n"), TempFile::new("# nothing yet\n\n"));
    let rows: &[(&[&str], &[&str])] = &[
        (
            &["--builders", BUILDER, "--builders-file", file.arg()],
            &["--builders and --builders-file exclude each other"],
        ),
        (&["--builders-file", bad.arg()], &["--builders-file", bad.arg(), "line 3", "https"]),
        (&["--builders-file", empty.arg()], &["lists no execution client"]),
        (&["--builders-file", "/nonexistent/els"], &["cannot read --builders-file"]),
    ];
    for (args, needles) in rows {
        assert_mentions(&error(args, &[]), needles);
    }
}

#[test]
fn builder_secrets_match_exactly_one_builder_by_name_or_url() {
    let builders = "127.0.0.1:1,http://127.0.0.2:2/engine,127.0.0.3:3";
    let (one, other) = (Some(secret(SECRET_HEX)), Some(secret(OTHER_SECRET_HEX)));
    let rows = [
        (
            secret_map(&[("127.0.0.1:1", SECRET_HEX), ("127.0.0.2:2/engine", OTHER_SECRET_HEX)]),
            vec![one.clone(), other, None],
        ),
        // A key written as a URL finds a builder written as host:port, and vice versa.
        (secret_map(&[("http://127.0.0.3:3/", SECRET_HEX)]), vec![None, None, one]),
    ];
    for (map, expected) in rows {
        assert_eq!(
            run(&["-builders", builders, "-builder-jwt-secrets", map.arg()], &[]).builder_jwt_secrets,
            expected
        );
    }
    let typo = secret_map(&[("127.0.0.1:1", SECRET_HEX), ("typo:8551", OTHER_SECRET_HEX)]);
    let proxy = secret_map(&[("127.0.0.9:9", SECRET_HEX)]);
    let twice = secret_map(&[("127.0.0.1:1", SECRET_HEX), ("http://127.0.0.1:1", OTHER_SECRET_HEX)]);
    let rows: &[(&[&str], &TempFile, &[&str])] = &[
        (&[], &typo, &["\"typo:8551\"", "matches no builder", typo.arg()]),
        // Proxies are not builders.
        (&["-proxies", "127.0.0.9:9"], &proxy, &["\"127.0.0.9:9\"", "matches no builder"]),
        (&[], &twice, &["matched by both", "127.0.0.1:1"]),
    ];
    for (more, map, needles) in rows {
        let message =
            error(&[&["-builders", "127.0.0.1:1", "-builder-jwt-secrets", map.arg()], *more].concat(), &[]);
        assert_mentions(&message, needles);
        assert!(!message.contains(OTHER_SECRET_HEX));
    }
}

#[test]
fn beacon_jwt_secrets_and_reload_read_the_secret_files_again() {
    let bns = secret_map(&[("bn-a", "11".repeat(32).as_str())]);
    let jwt = TempFile::new(SECRET_HEX);
    let config = run(&with_builder(&["--jwt-secret", jwt.arg(), "--beacon-jwt-secrets", bns.arg()]), &[]);
    assert_eq!(
        (config.jwt_secret.clone(), config.beacon_jwt_secrets[0].0.as_str()),
        (Some(secret(SECRET_HEX)), "bn-a")
    );
    std::fs::write(&jwt.0, OTHER_SECRET_HEX).unwrap();
    let reloaded = read_reloadable(&config.reload).unwrap();
    assert_eq!((reloaded.jwt_secret, reloaded.builders), (Some(secret(OTHER_SECRET_HEX)), config.builders));
    std::fs::write(&jwt.0, "not hex").unwrap();
    assert_mentions(&read_reloadable(&config.reload).unwrap_err().0, &["--jwt-secret"]);
}

#[test]
fn debug_output_does_not_leak_secrets() {
    let jwt = TempFile::new(SECRET_HEX);
    let map = secret_map(&[(BUILDER, OTHER_SECRET_HEX)]);
    let config = run(&with_builder(&["-jwt-secret", jwt.arg(), "-builder-jwt-secrets", map.arg()]), &[]);
    let debug = format!("{config:?} {:?}", Command::Run(config.clone()));
    for leak in [&SECRET_HEX[..16], &OTHER_SECRET_HEX[..16], "[1, 35, 69", "[254, 220"] {
        assert!(!debug.contains(leak), "Debug leaks {leak:?}: {debug}");
    }
}

#[test]
fn help_and_version() {
    let table: &[(&[&str], Command<()>)] = &[
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
    // Both binaries; what `Run` would carry is not looked at.
    fn shape<C>(parsed: Result<Command<C>, String>) -> Result<Command<()>, String> {
        parsed.map(|command| match command {
            Command::Run(_) => Command::Run(()),
            Command::Help => Command::Help,
            Command::Version => Command::Version,
        })
    }
    for (args, expected) in table {
        let got = (shape(parse_in(parse, args, &[])), shape(parse_in(parse_tokens_service, args, &[])));
        assert_eq!(got, (Ok(expected.clone()), Ok(expected.clone())), "{args:?}");
    }
}

#[test]
fn help_mentions_every_flag_default_and_variable() {
    for (help, flags) in [(help_text(), PROXY_FLAGS), (tokens_service_help_text(), TOKENS_FLAGS)] {
        for flag in flags {
            assert!(help.contains(&format!("--{}", flag.name)), "--{}", flag.name);
            for (what, text) in [("default", flag.default), ("env", flag.env)] {
                assert!(text.is_empty() || help.contains(&format!("[{what}: {text}]")), "{}", flag.name);
            }
        }
        assert_mentions(&help, &["--help", "--version", env!("CARGO_PKG_VERSION")]);
        assert!(!help.contains("0x"), "help has secret-like content");
    }
    assert_mentions(
        &help_text(),
        &["PROXY_LISTEN_ADDR", "BUILDER_TIMEOUT_MS", "LOG_LEVEL", "LOG_JSON", "BEACON_EXPIRY_MS"],
    );
    // The table's defaults feed both the help and the parser; they must be the documented ones.
    let documented = "addr=localhost:25590 proxy-request-timeout=2000 loglevel=info max-body-bytes=134217728 \
        memory-budget-bytes=1073741824 max-connections=1024 idle-timeout=60000 read-timeout=30000 \
        write-timeout=10000 backlog-requests=512 backlog-bytes=268435456 beacon-expiry=12000 answer-wait=1000";
    let proxy = documented
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .map(|(n, d)| (PROXY_FLAGS, n, d));
    let tokens = [(TOKENS_FLAGS, "addr", "localhost:1337"), (TOKENS_FLAGS, "config", "config.json")];
    for (flags, name, default) in proxy.chain(tokens) {
        assert_eq!(find(flags, name).map(|f: &Flag| f.default), Some(default), "{name}");
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
        assert_eq!(single_dash_to_double(os_args(input), &takes_value), os_args(expected), "{input:?}");
    }
}

/// entry, normalized url, Host header, request target, first resolved address ("-": a host that
/// would need DNS, so only its syntax is checked).
const ENDPOINTS: &str = "
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
    for line in ENDPOINTS.lines().filter(|l| !l.trim().is_empty()) {
        let [entry, url, host, path, first] = line.split_whitespace().collect::<Vec<_>>()[..] else {
            panic!("{line:?}")
        };
        let parts = split_endpoint(entry).unwrap();
        assert_eq!((parts.url.as_str(), parts.authority.as_str(), parts.path.as_str()), (url, host, path));
        if first != "-" {
            let endpoint = parse_endpoint(entry).unwrap();
            let got = (
                endpoint.name.as_str(),
                endpoint.url.as_str(),
                endpoint.host.as_str(),
                endpoint.path.as_str(),
            );
            assert_eq!(
                (got, endpoint.addrs[0]),
                ((entry, url, host, path), first.parse().unwrap()),
                "{entry:?}"
            );
        }
    }
    // The name is trimmed; localhost resolves IPv4 first.
    let endpoint = parse_endpoint(" \t127.0.0.1:8551 ").unwrap();
    assert_eq!((endpoint.name.as_str(), endpoint.host.as_str()), ("127.0.0.1:8551", "127.0.0.1:8551"));
    let addrs = parse_endpoint("localhost:8551").unwrap().addrs;
    assert_eq!(addrs[0], loopback(8551));
    let (first_v6, last_v4) =
        (addrs.iter().position(SocketAddr::is_ipv6), addrs.iter().rposition(SocketAddr::is_ipv4));
    assert!(first_v6.zip(last_v4).is_none_or(|(v6, v4)| v4 < v6), "{addrs:?}");
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
            Err(ConfigError(message)) => assert_mentions(&message, &[fragment, entry.trim()]),
            Ok(endpoint) => panic!("{entry:?} parsed as {endpoint:?}"),
        }
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
        assert_eq!((endpoint.url.as_str(), endpoint.is_https()), (url, true), "{entry:?}");
        assert_eq!(
            (endpoint.server_name(), endpoint.addrs[0]),
            (server_name, first.parse().unwrap()),
            "{entry:?}"
        );
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
    let (file, empty) =
        (TempFile::new(&format!("{}\n{}", pem("one"), pem("two"))), TempFile::new("# nothing here\n"));
    assert_eq!(
        run(&["--builders", "https://127.0.0.1:1", "--builder-ca", file.arg()], &[]).builder_ca.len(),
        2
    );
    let message = error(&["--builders", "https://127.0.0.1:1", "--builder-ca", empty.arg()], &[]);
    assert_mentions(&message, &["invalid --builder-ca file", "no PEM certificate"]);
}

#[cfg(not(feature = "tls"))]
#[test]
fn without_the_tls_feature_https_and_builder_ca_are_refused() {
    for entry in ["https://127.0.0.1:8551", "HTTPS://127.0.0.1:8551"] {
        assert_mentions(
            &parse_endpoint(entry).unwrap_err().0,
            &["https is not supported", entry, "cargo feature `tls`"],
        );
    }
    let file = TempFile::new("-----BEGIN CERTIFICATE-----\n");
    assert_mentions(
        &error(&with_builder(&["--builder-ca", file.arg()]), &[]),
        &["--builder-ca", "cargo feature `tls`"],
    );
}

#[test]
fn tokens_service_flags_environment_and_errors() {
    type Tokens = fn(&TokensServiceConfig) -> bool;
    let file = secret_map(&[("alpha", SECRET_HEX), ("beta", OTHER_SECRET_HEX)]);
    let base = ["-addr", "127.0.0.1:0", "-config", file.arg()];
    let tokens = |args: &[&str], env| ran(args, parse_in(parse_tokens_service, args, env));
    let config = tokens(&base, &[]);
    assert!(config.entries.iter().map(|(name, _)| name.as_str()).eq(["alpha", "beta"]));
    let defaults =
        (config.listen, config.listen_text.as_str(), config.client_id, config.log_level, config.log_json);
    assert_eq!(defaults, (loopback(0), "127.0.0.1:0", None, Info, false));
    let table: &[(&str, &str, Tokens)] = &[
        ("client-id", "cl-1", |c| c.client_id.as_deref() == Some("cl-1")),
        ("loglevel", "debug", |c| c.log_level == Debug),
        ("addr", "127.0.0.1:7", |c| c.listen == loopback(7)),
        ("config", file.arg(), |c| c.entries.len() == 2),
    ];
    let json =
        [vec!["-json".to_owned()], vec!["--json=true".to_owned()]].map(|s| (s, (|c| c.log_json) as Tokens));
    let spelled = table.iter().flat_map(|(flag, value, check)| spellings(flag, value).map(|s| (s, *check)));
    for (spelling, check) in spelled.chain(json) {
        let args = joined(&base, &spelling);
        assert!(check(&tokens(&args, &[])), "{args:?}");
    }
    let config = tokens(&base, &[("LOG_LEVEL", "trace"), ("LOG_JSON", "yes")]);
    assert_eq!((config.log_level, config.log_json), (Trace, true));

    let (empty, invalid) = (TempFile::new("{}"), secret_map(&[("alpha", &SECRET_HEX[..10])]));
    let missing = format!("{}-missing", file.arg());
    let rows: &[(&[&str], &[&str])] = &[
        (&["-builders", "x", "-config", file.arg()], &["unknown flag", "--builders"]),
        (&["-config", &missing], &["cannot read --config file", &missing]),
        (&["-config", empty.arg()], &["no entries", empty.arg()]),
        (&["-config", invalid.arg()], &["invalid --config file", invalid.arg()]),
        (&["-config", file.arg(), "-addr", "nowhere"], &["not an address", "--addr"]),
        (&["-config", file.arg(), "-loglevel=loud"], &["not a log level"]),
        (&["-config", file.arg(), "stray"], &["unexpected argument"]),
        (&["-config"], &["missing value", "--config"]),
    ];
    for (args, needles) in rows {
        let message = parse_in(parse_tokens_service, args, &[]).unwrap_err();
        assert_mentions(&message, needles);
        assert!(!message.contains(&SECRET_HEX[..10]), "{message}");
    }
}

#[test]
fn the_defaults_serve_the_tokens_service() {
    let file = secret_map(&[("alpha", SECRET_HEX)]);
    let args = ["-addr", "127.0.0.1:0", "-config", file.arg(), "-loglevel", "warn"];
    let config = Config::serving_only(&ran(&args, parse_in(parse_tokens_service, &args, &[])));
    let proxy = run(&with_builder(&[]), &[]);
    assert_eq!((config.listen, config.log_level, config.builders.len()), (loopback(0), Warn, 0));
    let limits = |c: &Config| {
        (c.max_connections, c.idle_timeout, c.read_timeout, c.write_timeout, c.memory_budget_bytes)
    };
    assert_eq!(limits(&config), limits(&proxy));
}
