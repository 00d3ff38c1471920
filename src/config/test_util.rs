//! Helpers for the unit tests of the command line: run `parse` on string arguments and a map
//! environment, temporary files, and the secrets to look for in leaks.

pub(super) use super::*;
use std::collections::HashMap;
pub(super) use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A secret whose hex and bytes are easy to spot in any output that leaks them.
pub(crate) const SECRET_HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub(crate) const OTHER_SECRET_HEX: &str = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";
pub(crate) const BUILDER: &str = "127.0.0.1:8551";

pub(crate) fn os_args(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

pub(crate) fn no_env(_: &str) -> Option<String> {
    None
}

pub(crate) fn env_map(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    move |key| map.get(key).cloned()
}

#[track_caller]
pub(crate) fn run_with(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> Config {
    match parse(os_args(args), env) {
        Ok(Command::Run(config)) => config,
        other => panic!("{args:?}: expected a config, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn run(args: &[&str]) -> Config {
    run_with(args, &no_env)
}

#[track_caller]
pub(crate) fn error_with(args: &[&str], env: &dyn Fn(&str) -> Option<String>) -> String {
    match parse(os_args(args), env) {
        Err(ConfigError(message)) => {
            assert!(!message.contains('\n'), "not one line: {message:?}");
            message
        }
        Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
    }
}

#[track_caller]
pub(crate) fn error(args: &[&str]) -> String {
    error_with(args, &no_env)
}

#[track_caller]
pub(crate) fn assert_mentions(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(message.contains(needle), "{message:?} does not mention {needle:?}");
    }
}

pub(crate) fn secret(hex: &str) -> Secret {
    Secret::from_hex(hex).unwrap()
}

/// A file under the temp dir, removed when dropped, so failing tests clean up too.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
}

impl TempFile {
    pub(crate) fn new(content: &str) -> TempFile {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sync-proxy-config-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
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

/// The four spellings Go's flag package accepts for a flag with a value.
pub(crate) fn spellings(flag: &str, value: &str) -> Vec<Vec<String>> {
    vec![
        vec![format!("-{flag}"), value.to_owned()],
        vec![format!("--{flag}"), value.to_owned()],
        vec![format!("-{flag}={value}")],
        vec![format!("--{flag}={value}")],
    ]
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}
