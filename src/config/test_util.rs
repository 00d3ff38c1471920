//! Helpers for the unit tests of the command line: `parse` on string arguments and an
//! environment given as pairs, temporary files, and secrets that are easy to spot in a leak.

pub(crate) use super::*;
pub(crate) use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A secret whose hex and bytes are easy to spot in any output that leaks them.
pub(crate) const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub(crate) const OTHER_SECRET_HEX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
pub(crate) const BUILDER: &str = "127.0.0.1:8551";

pub(crate) fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Runs a parser with `env` as the whole environment; an error must be one line.
fn parse_with<C>(
    env: &[(&str, &str)],
    parse: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<Command<C>, ConfigError>,
) -> Result<Command<C>, String> {
    let env = |var: &str| env.iter().find(|(name, _)| *name == var).map(|(_, value)| value.to_string());
    parse(&env).map_err(|ConfigError(message)| {
        assert!(!message.contains('\n'), "not one line: {message:?}");
        message
    })
}

pub(crate) fn parse_env(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
    parse_with(env, |env| parse(os_args(args), env))
}

pub(crate) fn tokens(args: &[&str], env: &[(&str, &str)]) -> Result<TokensCommand, String> {
    parse_with(env, |env| parse_tokens_service(os_args(args), env))
}

/// What `Run` carries, or a panic naming the arguments.
#[track_caller]
pub(crate) fn ran<C: fmt::Debug>(args: &[&str], parsed: Result<Command<C>, String>) -> C {
    match parsed {
        Ok(Command::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn run_env(args: &[&str], env: &[(&str, &str)]) -> Config {
    ran(args, parse_env(args, env))
}

#[track_caller]
pub(crate) fn run(args: &[&str]) -> Config {
    run_env(args, &[])
}

#[track_caller]
pub(crate) fn error_env(args: &[&str], env: &[(&str, &str)]) -> String {
    match parse_env(args, env) {
        Err(message) => message,
        Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn error(args: &[&str]) -> String {
    error_env(args, &[])
}

/// `-builders BUILDER` followed by `args`.
pub(crate) fn with_builder<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&["-builders", BUILDER][..], args].concat()
}

#[track_caller]
pub(crate) fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "{message:?} does not mention {needle:?}");
    }
}

/// Each row: arguments after `-builders BUILDER`, and what the error must mention.
#[track_caller]
pub(crate) fn assert_errors(rows: &[(&[&str], &[&str])]) {
    for (args, needles) in rows {
        assert_mentions(&error(&with_builder(args)), needles);
    }
}

pub(crate) fn secret(hex: &str) -> Secret {
    Secret::from_hex(hex).unwrap()
}

/// A secrets map file: `{"key": "hex", ...}`.
pub(crate) fn secret_map(pairs: &[(&str, &str)]) -> TempFile {
    let entries: Vec<String> = pairs.iter().map(|(key, hex)| format!("\"{key}\": \"{hex}\"")).collect();
    TempFile::new(&format!("{{{}}}", entries.join(", ")))
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// The four spellings Go's flag package accepts for a flag with a value.
pub(crate) fn spellings(flag: &str, value: &str) -> Vec<Vec<String>> {
    let (one, two) = (format!("-{flag}"), format!("--{flag}"));
    vec![
        vec![one.clone(), value.to_owned()],
        vec![two.clone(), value.to_owned()],
        vec![format!("{one}={value}")],
        vec![format!("{two}={value}")],
    ]
}

/// `base` followed by `more`, as `&str`s.
pub(crate) fn joined<'a>(base: &[&'a str], more: &'a [String]) -> Vec<&'a str> {
    base.iter().copied().chain(more.iter().map(String::as_str)).collect()
}

/// A file under the temp dir, removed when dropped, so failing tests clean up too.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
}

impl TempFile {
    pub(crate) fn new(content: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("sync-proxy-config-test-{}-{n}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        TempFile { path }
    }

    pub(crate) fn arg(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
