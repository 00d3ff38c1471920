//! The command line of both binaries, one row per case: arguments, environment, and the value
//! they must give or the words their error must contain. Files are temporary, and secrets are
//! easy to spot in anything that leaks them.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::endpoints::split_endpoint;
use super::flags::{find, single_dash_to_double, Flag};
use super::*;

const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const OTHER_SECRET_HEX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
const BUILDER: &str = "127.0.0.1:8551";

type Env<'a> = &'a [(&'a str, &'a str)];

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

/// One case a line: arguments | environment | what `{:?}` of the config must show, as
/// `field: value` pieces, or `error:` and the words the one-line error must contain, or `Help` or `Version`. Arguments
/// follow `-builders 127.0.0.1:8551`, unless the line starts with the binary to run
/// (`sync-proxy`, `jwt-tokens-service`); `~-flag value` stands for its four Go spellings; `$NAME`
/// is a file made by `cases`, `$ENV` a full environment, and `␣` a space.
const CASES: &str = "
# Defaults without environment.
                                  |                     | listen: 127.0.0.1:25590; listen_text: \"localhost:25590\"; proxies: []
                                  |                     | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
                                  |                     | idle_timeout: 60s; read_timeout: 30s; write_timeout: 10s; answer_wait: 1s
                                  |                     | max_body_bytes: 134217728; memory_budget_bytes: 1073741824; max_connections: 1024
                                  |                     | backlog_requests: 512; backlog_bytes: 268435456; log_level: Info; log_json: false
                                  |                     | mirror_mode: false; metrics_addr: None; jwt_client_id: None; builder_jwt_secrets: [None]
                                  |                     | answer_policy: Primary; payload_choice: Primary; beacon_switch: ValidOnly; beacon_jwt_secrets: []
# The environment gives defaults (Go's -proxy-request-timeout defaults to BUILDER_TIMEOUT_MS too).
                                  | $ENV                | listen: 127.0.0.1:0; listen_text: \"127.0.0.1:0\"; request_timeout: Some(3s)
                                  | $ENV                | proxy_request_timeout: 3s; log_level: Warn; log_json: true; beacon_expiry: 24s
# Flags override it.
-addr=127.0.0.1:1 -request-timeout=100 -proxy-request-timeout=200 | $ENV | listen: 127.0.0.1:1; request_timeout: Some(100ms); proxy_request_timeout: 200ms
-loglevel=error -json=false -beacon-expiry=300 | $ENV | log_level: Error; log_json: false; beacon_expiry: 300ms
# Numbers in the environment that Go's strconv.Atoi refuses are ignored.
  | BUILDER_TIMEOUT_MS=abc BEACON_EXPIRY_MS=abc | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
  | BUILDER_TIMEOUT_MS=0 BEACON_EXPIRY_MS=0     | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
  | BUILDER_TIMEOUT_MS=-5 BEACON_EXPIRY_MS=-5   | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
  | BUILDER_TIMEOUT_MS=1.5 BEACON_EXPIRY_MS=1.5 | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
  | BUILDER_TIMEOUT_MS= BEACON_EXPIRY_MS=       | request_timeout: None; proxy_request_timeout: 2s; beacon_expiry: 12s
# Empty variables count as unset.
  | PROXY_LISTEN_ADDR= LOG_LEVEL=               | listen_text: \"localhost:25590\"; log_level: Info
# MIRROR_MODE and METRICS_ADDR as upstream reads them; flags override them.
  | MIRROR_MODE=1     | mirror_mode: true
  | MIRROR_MODE=t     | mirror_mode: true
  | MIRROR_MODE=T     | mirror_mode: true
  | MIRROR_MODE=true  | mirror_mode: true
  | MIRROR_MODE=TRUE  | mirror_mode: true
  | MIRROR_MODE=True  | mirror_mode: true
  | MIRROR_MODE=0     | mirror_mode: false
  | MIRROR_MODE=f     | mirror_mode: false
  | MIRROR_MODE=F     | mirror_mode: false
  | MIRROR_MODE=false | mirror_mode: false
  | MIRROR_MODE=FALSE | mirror_mode: false
  | MIRROR_MODE=False | mirror_mode: false
  | MIRROR_MODE=      | mirror_mode: false
  | METRICS_ADDR=127.0.0.1:9551 | metrics_addr: Some(127.0.0.1:9551)
  | METRICS_ADDR=               | metrics_addr: None
-mirror-mode=false --metrics-addr 127.0.0.1:9552 | MIRROR_MODE=true METRICS_ADDR=127.0.0.1:9551 | mirror_mode: false; metrics_addr: Some(127.0.0.1:9552)
--mirror-mode      | MIRROR_MODE=false | mirror_mode: true
-mirror-mode=false | MIRROR_MODE=yes   | mirror_mode: false
# Any non-empty LOG_JSON turns JSON logging on, as in Go.
  | LOG_JSON=true  | log_json: true
  | LOG_JSON=false | log_json: true
  | LOG_JSON=x     | log_json: true
  | LOG_JSON=      | log_json: false
# Log levels as logrus names them; a flag makes a bad LOG_LEVEL irrelevant.
--loglevel=trace   |  | log_level: Trace
--loglevel=debug   |  | log_level: Debug
--loglevel=info    |  | log_level: Info
--loglevel=INFO    |  | log_level: Info
--loglevel=        |  | log_level: Info
--loglevel=warn    |  | log_level: Warn
--loglevel=warning |  | log_level: Warn
--loglevel=error   |  | log_level: Error
--loglevel=fatal   |  | log_level: Error
--loglevel=panic   |  | log_level: Error
--loglevel=off     |  | log_level: Off
-loglevel=debug    | LOG_LEVEL=loud | log_level: Debug
# Listen addresses: IPv4 first; \":PORT\" is every interface.
-addr 127.0.0.1:0   |  | listen: 127.0.0.1:0; listen_text: \"127.0.0.1:0\"
-addr localhost:0   |  | listen: 127.0.0.1:0; listen_text: \"localhost:0\"
-addr :0            |  | listen: 0.0.0.0:0
-addr [::1]:0       |  | listen: [::1]:0
-addr 0.0.0.0:25590 |  | listen: 0.0.0.0:25590
# Booleans as Go's flag package reads them.
-json -mirror-mode                |  | log_json: true; mirror_mode: true
--json --mirror-mode              |  | log_json: true; mirror_mode: true
-json=true --mirror-mode=true     |  | log_json: true; mirror_mode: true
-json=1 -mirror-mode=t            |  | log_json: true; mirror_mode: true
-json=TRUE -mirror-mode=T         |  | log_json: true; mirror_mode: true
-json=false --mirror-mode=false   |  | log_json: false; mirror_mode: false
--json=false -mirror-mode=0       |  | log_json: false; mirror_mode: false
-json=0 -mirror-mode=F            |  | log_json: false; mirror_mode: false
-json=F -mirror-mode=False        |  | log_json: false; mirror_mode: false
-json=False -mirror-mode=FALSE    |  | log_json: false; mirror_mode: false
# The last occurrence of a flag wins.
-builders 127.0.0.1:1 --loglevel=error -builders=127.0.0.1:2 -loglevel trace -json -json=false | | name: \"127.0.0.1:2\"; log_level: Trace; log_json: false
# A value that looks like a flag is kept; an empty client id means none.
-jwt-client-id -abc |  | jwt_client_id: Some(\"-abc\")
-jwt-client-id=     |  | jwt_client_id: None
# Answer policies and the beacon switch; without safe the wait is unused, so a short --request-timeout is no conflict.
--answer-policy safe --answer-wait 250 --beacon-switch not-invalid | | answer_policy: Safe; answer_wait: 250ms; beacon_switch: NotInvalid
--payload-choice best-value |  | payload_choice: BestValue
--request-timeout 100       |  | request_timeout: Some(100ms); answer_wait: 1s
# Builders keep their order and skip empty entries, as Go's parseURLs.
--builders ␣127.0.0.1:1␣,,␣127.0.0.2:2, --proxies ,␣, | | proxies: []; builders: [Endpoint { name: \"127.0.0.1:1\"; addrs: [127.0.0.2:2]
# Every value flag in every Go spelling (-flag value, --flag value, -flag=value, --flag=value).
~-addr 127.0.0.1:0                  |  | listen: 127.0.0.1:0; listen_text: \"127.0.0.1:0\"
~-builders 127.0.0.1:1,127.0.0.2:2  |  | builder_jwt_secrets: [None, None]; addrs: [127.0.0.2:2]
~-proxies 127.0.0.1:3               |  | proxies: [Endpoint { name: \"127.0.0.1:3\"; url: \"http://127.0.0.1:3/\"
~-request-timeout 1500              |  | request_timeout: Some(1.5s)
~-proxy-request-timeout 250         |  | proxy_request_timeout: 250ms
~-loglevel debug                    |  | log_level: Debug
~-max-body-bytes 1048576            |  | max_body_bytes: 1048576
~-memory-budget-bytes 65536         |  | memory_budget_bytes: 65536
~-max-connections 7                 |  | max_connections: 7
~-idle-timeout 5000                 |  | idle_timeout: 5s
~-read-timeout 4000                 |  | read_timeout: 4s
~-write-timeout 3000                |  | write_timeout: 3s
~-backlog-requests 9                |  | backlog_requests: 9
~-backlog-bytes 4096                |  | backlog_bytes: 4096
~-beacon-expiry 6000                |  | beacon_expiry: 6s
~-answer-wait 700                   |  | answer_wait: 700ms
~-answer-policy safe                |  | answer_policy: Safe
~-payload-choice best-value         |  | payload_choice: BestValue
~-beacon-switch not-invalid         |  | beacon_switch: NotInvalid
~-jwt-client-id proxy-1             |  | jwt_client_id: Some(\"proxy-1\")
~-metrics-addr 127.0.0.1:9090       |  | metrics_addr: Some(127.0.0.1:9090)
~-jwt-secret $JWT                   |  | jwt_secret: Some(Secret(<redacted>))
~-builder-jwt-secrets $MAP          |  | builder_jwt_secrets: [Some(Secret(<redacted>))]
~-beacon-jwt-secrets $BNS           |  | beacon_jwt_secrets: [(\"bn-a\", Secret(<redacted>))]
# jwt-tokens-service: its flags in every spelling, LOG_LEVEL and LOG_JSON, its errors.
jwt-tokens-service -addr 127.0.0.1:0 -config $TOKENS |  | listen: 127.0.0.1:0; listen_text: \"127.0.0.1:0\"; client_id: None; log_level: Info; log_json: false
jwt-tokens-service -config $TOKENS  |  | entries: [(\"alpha\", Secret(<redacted>)), (\"beta\", Secret(<redacted>))]; listen_text: \"localhost:1337\"
jwt-tokens-service -config $TOKENS ~-client-id cl-1  |  | client_id: Some(\"cl-1\")
jwt-tokens-service -config $TOKENS ~-loglevel debug  |  | log_level: Debug
jwt-tokens-service -config $TOKENS ~-addr 127.0.0.1:7 |  | listen: 127.0.0.1:7
jwt-tokens-service ~-config $TOKENS |  | entries: [(\"alpha\", Secret(<redacted>)), (\"beta\", Secret(<redacted>))]
jwt-tokens-service -config $TOKENS -json        |  | log_json: true
jwt-tokens-service -config $TOKENS --json=true  |  | log_json: true
jwt-tokens-service -config $TOKENS | LOG_LEVEL=trace LOG_JSON=yes | log_level: Trace; log_json: true
jwt-tokens-service -builders x -config $TOKENS  |  | error: unknown flag; --builders
jwt-tokens-service -config $MISSING             |  | error: cannot read --config file; $MISSING
jwt-tokens-service -config $EMPTY               |  | error: no entries; $EMPTY
jwt-tokens-service -config $SHORT               |  | error: invalid --config file; $SHORT
jwt-tokens-service -config $TOKENS -addr nowhere |  | error: not an address; --addr
jwt-tokens-service -config $TOKENS -loglevel=loud |  | error: not a log level
jwt-tokens-service -config $TOKENS stray        |  | error: unexpected argument
jwt-tokens-service -config                      |  | error: missing value; --config
# Builders: --builders or a --builders-file (one EL per line, # comments), never both, never none.
sync-proxy                               |  | error: no builders given: use --builders host:port[,host:port…]
sync-proxy --builders=                   |  | error: no builders given: use --builders host:port[,host:port…]
sync-proxy --builders ␣,␣,               |  | error: no builders given: use --builders host:port[,host:port…]
sync-proxy --proxies 127.0.0.1:8551      |  | error: no builders given: use --builders host:port[,host:port…]
sync-proxy --builders-file $ELS          |  | builders: [Endpoint { name: \"127.0.0.1:8552\"; builder_jwt_secrets: [None, None, None]; builders: File(\"$ELS\")
sync-proxy --builders 127.0.0.1:8551 --builders-file $ELS |  | error: --builders and --builders-file exclude each other
sync-proxy --builders-file $BAD_ELS      |  | error: --builders-file; $BAD_ELS; line 3; https
sync-proxy --builders-file $NO_ELS       |  | error: --builders-file; $NO_ELS; lists no execution client
sync-proxy --builders-file /nonexistent  |  | error: cannot read --builders-file; /nonexistent
# A --builder-jwt-secrets key must match exactly one builder (proxies are not builders).
sync-proxy -builders 127.0.0.1:1 -builder-jwt-secrets $TYPO |  | error: \"typo:8551\"; matches no builder; $TYPO
sync-proxy -builders 127.0.0.1:1 -proxies 127.0.0.9:9 -builder-jwt-secrets $PROXY_KEY | | error: \"127.0.0.9:9\"; matches no builder
sync-proxy -builders 127.0.0.1:1 -builder-jwt-secrets $TWICE |  | error: matched by both; 127.0.0.1:1
# Help and version need no builders, and win over what follows them, as in Go.
sync-proxy -h                              |  | Help
sync-proxy --help                          |  | Help
sync-proxy -help                           |  | Help
sync-proxy --h                             |  | Help
sync-proxy --version                       |  | Version
sync-proxy -version                        |  | Version
sync-proxy --addr nonsense -h --bogus      |  | Help
sync-proxy -version positional             |  | Version
jwt-tokens-service -h                      |  | Help
jwt-tokens-service --help                  |  | Help
jwt-tokens-service -help                   |  | Help
jwt-tokens-service --version               |  | Version
jwt-tokens-service --addr nonsense -h --bogus |  | Help
jwt-tokens-service -version positional     |  | Version
# Bad values in the environment name their variable.
  | LOG_LEVEL=loud              | error: not a log level; LOG_LEVEL; --loglevel
  | METRICS_ADDR=nowhere        | error: METRICS_ADDR; --metrics-addr; nowhere
  | PROXY_LISTEN_ADDR=127.0.0.1 | error: not an address; PROXY_LISTEN_ADDR
  | MIRROR_MODE=yes             | error: MIRROR_MODE; --mirror-mode; true or false
  | MIRROR_MODE=on              | error: MIRROR_MODE; --mirror-mode; true or false
  | MIRROR_MODE=␣true           | error: MIRROR_MODE; --mirror-mode; true or false
  | MIRROR_MODE=2               | error: MIRROR_MODE; --mirror-mode; true or false
# Bad flag values.
--loglevel loud                 |  | error: not a log level; \"loud\"; --loglevel
--idle-timeout=31536000001      |  | error: --idle-timeout; 31536000001
--answer-policy vote            |  | error: --answer-policy; \"vote\"; primary or safe
--beacon-switch any             |  | error: --beacon-switch; \"any\"; valid or not-invalid
--payload-choice max            |  | error: --payload-choice; \"max\"; primary or best-value
--answer-policy safe --request-timeout 500 --answer-wait 500 | | error: --answer-wait; 500 ms
--beacon-jwt-secrets $BAD_BN    |  | error: --beacon-jwt-secrets; not an identity
# Bad command lines (Go reads \"-json false\" as -json and a positional argument; -5 is a short flag).
-json=maybe                     |  | error: invalid boolean; --json
--json=                         |  | error: invalid boolean
--mirror-mode=yes               |  | error: invalid boolean; --mirror-mode
-json false                     |  | error: unexpected argument; false
-bogus                          |  | error: unknown flag; --bogus
--bogus=1                       |  | error: unknown flag; --bogus
-x                              |  | error: unknown flag; -x
-5                              |  | error: unknown flag -5
--builder 127.0.0.1:8551        |  | error: unknown flag; --builder
-config x                       |  | error: unknown flag; --config
stray                           |  | error: unexpected argument
-                               |  | error: unexpected argument
-- --addr 127.0.0.1:0           |  | error: unexpected argument
# Entries of --builders and --proxies name their flag.
--builders 127.0.0.1:1,ws://127.0.0.1:2 |  | error: --builders; only http://; ws://127.0.0.1:2
--proxies 127.0.0.1:x           |  | error: --proxies; invalid port; 127.0.0.1:x
# Secret files are named, never their content (checked for every error row).
--jwt-secret $MISSING           |  | error: cannot read; --jwt-secret; $MISSING
--builder-jwt-secrets $MISSING  |  | error: cannot read; --builder-jwt-secrets; $MISSING
--jwt-secret $ALMOST            |  | error: invalid --jwt-secret file; $ALMOST
--builder-jwt-secrets $MAP_ALMOST |  | error: invalid --builder-jwt-secrets file; $MAP_ALMOST
--builder-jwt-secrets $ALMOST   |  | error: invalid --builder-jwt-secrets file; $ALMOST
";

#[test]
fn cases() {
    let almost = &SECRET_HEX[..60];
    let missing = std::env::temp_dir().join(format!("sync-proxy-config-test-missing-{}", std::process::id()));
    let files = [
        ("$JWT", TempFile::new(SECRET_HEX)),
        ("$MAP_ALMOST", secret_map(&[(BUILDER, almost)])),
        ("$MAP", secret_map(&[(BUILDER, OTHER_SECRET_HEX)])),
        ("$BNS", secret_map(&[("bn-a", "11".repeat(32).as_str())])),
        ("$BAD_BN", secret_map(&[("bn a", "11".repeat(32).as_str())])),
        ("$TOKENS", secret_map(&[("alpha", SECRET_HEX), ("beta", OTHER_SECRET_HEX)])),
        ("$EMPTY", TempFile::new("{}")),
        ("$SHORT", secret_map(&[("alpha", &SECRET_HEX[..10])])),
        ("$ALMOST", TempFile::new(almost)),
        (
            "$ELS",
            TempFile::new("# ELs\n127.0.0.1:8552  # primary\n\n 127.0.0.1:8551 ,http://127.0.0.1:8553/\n"),
        ),
        ("$BAD_ELS", TempFile::new("127.0.0.1:8551\n\nhttps://el:8551\n")),
        ("$NO_ELS", TempFile::new("# nothing yet\n\n")),
        ("$TYPO", secret_map(&[("127.0.0.1:1", SECRET_HEX), ("typo:8551", OTHER_SECRET_HEX)])),
        ("$PROXY_KEY", secret_map(&[("127.0.0.9:9", SECRET_HEX)])),
        ("$TWICE", secret_map(&[("127.0.0.1:1", SECRET_HEX), ("http://127.0.0.1:1", OTHER_SECRET_HEX)])),
    ];
    let paths: Vec<(&str, &str)> = files
        .iter()
        .map(|(name, file)| (*name, file.arg()))
        .chain([("$MISSING", missing.to_str().unwrap())])
        .collect();
    let env_vars = "PROXY_LISTEN_ADDR=127.0.0.1:0 BUILDER_TIMEOUT_MS=3000 LOG_LEVEL=warning LOG_JSON=1 BEACON_EXPIRY_MS=24000";
    let expand = |text: &str| {
        paths.iter().fold(text.replace("$ENV", env_vars), |text, (name, path)| text.replace(name, path))
    };
    for line in CASES.lines().filter(|line| !line.trim().is_empty() && !line.starts_with('#')) {
        let [args, env, want] = &line.split('|').map(|col| expand(col.trim())).collect::<Vec<_>>()[..] else {
            panic!("bad case {line:?}")
        };
        let words =
            |text: &str| text.split_whitespace().map(|word| word.replace('␣', " ")).collect::<Vec<_>>();
        let env = words(env);
        let env: Vec<(&str, &str)> = env.iter().filter_map(|pair| pair.split_once('=')).collect();
        let (tokens, args) = match (args.strip_prefix("jwt-tokens-service"), args.strip_prefix("sync-proxy"))
        {
            (Some(args), _) => (true, words(args)),
            (_, Some(args)) => (false, words(args)),
            _ => (false, words(&format!("-builders {BUILDER} {args}"))),
        };
        // "~-flag value" stands for each of its spellings.
        let spelled: Vec<Vec<String>> = match args.iter().position(|arg| arg.starts_with('~')) {
            Some(at) => spellings(&args[at][2..], &args[at + 1])
                .map(|spelling| [&args[..at], &spelling[..], &args[at + 2..]].concat())
                .into(),
            None => vec![args],
        };
        for args in spelled {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let outcome = match tokens {
                true => parse_in(parse_tokens_service, &args, &env).map(|command| format!("{command:?}")),
                false => parse_in(parse, &args, &env).map(|command| format!("{command:?}")),
            };
            let pieces: Vec<&str> =
                want.strip_prefix("error:").unwrap_or(want).split(';').map(str::trim).collect();
            match (want.starts_with("error:"), outcome) {
                (true, Err(message)) => {
                    assert_mentions(&message, &pieces);
                    let leaks = [almost, &SECRET_HEX[..10], &OTHER_SECRET_HEX[..10]];
                    assert!(leaks.iter().all(|leak| !message.contains(leak)), "{message}");
                }
                (false, Ok(debug)) if debug == *want => {}
                (false, Ok(debug)) if debug.starts_with("Run(") => {
                    for piece in pieces {
                        let shown =
                            debug.contains(&format!(" {piece},")) || debug.contains(&format!(" {piece} }}"));
                        assert!(shown, "{line:?}: no {piece:?} in {debug}");
                    }
                }
                (_, outcome) => panic!("{line:?} {args:?} gave {outcome:?}"),
            }
        }
    }
}

#[test]
fn every_bad_number_address_and_missing_value_is_named() {
    let millis =
        ["request-timeout", "proxy-request-timeout", "idle-timeout", "read-timeout", "write-timeout"];
    let counts =
        ["max-body-bytes", "memory-budget-bytes", "max-connections", "backlog-requests", "backlog-bytes"];
    let numbers = millis.iter().chain(&["beacon-expiry", "answer-wait"]).chain(&counts).flat_map(|flag| {
        ["0", "abc", "-1", "1.5", "", "1e3", "99999999999999999999999"].map(|bad| (format!("--{flag}"), bad))
    });
    let addrs = ["", "127.0.0.1", "127.0.0.1:99999", "127.0.0.1:x", "::1:0", "a b:1"]
        .into_iter()
        .flat_map(|bad| [("--addr".to_owned(), bad), ("--metrics-addr".to_owned(), bad)]);
    for (flag, bad) in numbers.chain(addrs) {
        let message = error(&with_builder(&[&format!("{flag}={bad}")]), &[]);
        assert_mentions(&message, &[&flag, "invalid value", &format!("{bad:?}")]);
    }
    for flag in PROXY_FLAGS.iter().filter(|f| f.value.is_some()) {
        for dash in ["-", "--"] {
            let message = error(&with_builder(&[&format!("{dash}{}", flag.name)]), &[]);
            assert_mentions(&message, &["missing value", &format!("--{}", flag.name)]);
        }
    }
}

#[test]
fn builder_secrets_match_by_name_or_url() {
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
    // A 0x prefix and white space around the secret are fine.
    std::fs::write(&jwt.0, format!("  0x{SECRET_HEX}\n")).unwrap();
    assert_eq!(read_reloadable(&config.reload).unwrap().jwt_secret, Some(secret(SECRET_HEX)));
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
        let (parts, ..) = split_endpoint(entry).unwrap();
        assert_eq!((parts.url.as_str(), parts.host.as_str(), parts.path.as_str()), (url, host, path));
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
fn the_defaults_serve_the_tokens_service() {
    let file = secret_map(&[("alpha", SECRET_HEX)]);
    let args = ["-addr", "127.0.0.1:0", "-config", file.arg(), "-loglevel", "warn"];
    let config = Config::serving_only(&ran(&args, parse_in(parse_tokens_service, &args, &[])));
    let proxy = run(&with_builder(&[]), &[]);
    assert_eq!(
        (config.listen, config.log_level, config.builders.len()),
        (loopback(0), log::LevelFilter::Warn, 0)
    );
    let limits = |c: &Config| {
        (c.max_connections, c.idle_timeout, c.read_timeout, c.write_timeout, c.memory_budget_bytes)
    };
    assert_eq!(limits(&config), limits(&proxy));
}
