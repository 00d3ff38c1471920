//! Command lines for the `config_args` target that never leave the machine.
//!
//! `config::parse` resolves `--addr`, `--metrics-addr`, `--builders` and `--proxies` with the
//! system resolver, and reads the files `--jwt-secret`, `--builder-jwt-secrets` and `--config`
//! name. Arbitrary strings there would send DNS queries for random names and could read any file
//! (`/dev/zero` never ends, `/dev/stdin` blocks). So the input does not spell the arguments
//! directly: it is split on NUL bytes and each part becomes one argument:
//!
//! - `FF i f v`: flag `i` of [`FLAGS`], written `--name`, `-name`, `--name=VALUE` or
//!   `-name=VALUE` as `f` says, with VALUE picked by `v` from the values that suit the flag.
//! - `FE i`: word `i` of all the value lists together (addresses, files, other values).
//! - anything else: the bytes as they are, except that each comma-separated part without an
//!   ASCII control character (other than whitespace, which is trimmed) gets a 0x01 appended.
//!   Addresses and URLs with control characters are refused before any lookup, and no file
//!   has such a name.
//!
//! Every word is harmless as a file name, but a word such as `abc` or `0` would be looked up if
//! it followed an address flag. [`hermetic`] checks the finished command line, and the target
//! skips it unless every value an address flag could take is an IP literal, `localhost` (which
//! /etc/hosts answers) or text refused before lookup. The default `--addr` is `localhost:25590`.
//! The target also asserts that every address a parse resolved is loopback or unspecified.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

/// Flags of both binaries, plus the built-in ones and a few unknown names.
pub const FLAGS: &[&str] = &[
    "addr",
    "builders",
    "proxies",
    "metrics-addr",
    "jwt-secret",
    "builder-jwt-secrets",
    "config",
    "request-timeout",
    "proxy-request-timeout",
    "loglevel",
    "json",
    "mirror-mode",
    "max-body-bytes",
    "max-connections",
    "idle-timeout",
    "read-timeout",
    "backlog-requests",
    "backlog-bytes",
    "beacon-expiry",
    "jwt-client-id",
    "client-id",
    "help",
    "h",
    "version",
    "unknown",
    "",
];

/// Listen addresses that need no lookup beyond /etc/hosts, or are refused before one.
const LISTEN: &[&str] = &[
    "127.0.0.1:1",
    "127.0.0.1:0",
    "0.0.0.0:25590",
    ":0",
    ":8551",
    ":99999",
    ":",
    "[::1]:1",
    "[::1]:0",
    "localhost:8551",
    "LOCALHOST:1",
    "localhost:",
    "localhost:abc",
    "localhost",
    "127.0.0.1",
    "[::1]",
    "::1",
    "",
];

/// Builder and proxy entries of the same kind: literals, `localhost`, and entries refused
/// before lookup (https, other schemes, user info, fragments, bad ports, bad brackets).
const ENDPOINTS: &[&str] = &[
    "127.0.0.1:1",
    "127.0.0.1:8551",
    "localhost:8551",
    "localhost",
    "LocalHost:1",
    "http://[::1]:1/x",
    "http://127.0.0.1:8551/a/b?c=d",
    "HTTP://localhost:1?q",
    "http://localhost",
    "http://localhost:8551",
    "[::1]",
    "[::1]:0",
    "127.0.0.1:0",
    "localhost:99999",
    "localhost:+1",
    "localhost:abc",
    "https://x",
    "ftp://localhost",
    "http://user@localhost:1",
    "localhost:1#frag",
    "[fe80::1%lo]:1",
    "[::1",
    "[::1]x",
    "::1",
    "http://",
    "http:///x",
];

/// Values for `--builders` and `--proxies`: single entries and lists of them.
const ENDPOINT_LISTS: &[&str] = &[
    "localhost:8551",
    "127.0.0.1:1",
    "http://[::1]:1/x",
    "localhost:8551,127.0.0.1:1",
    "localhost:8551,localhost:8551",
    "http://localhost:8551,localhost:8551",
    " localhost:8551 , ,127.0.0.1:1,",
    "127.0.0.1:1,https://x",
    "HTTP://localhost:1?q,localhost:1#frag",
    ",",
    "",
];

/// Files a flag may name: fixtures checked in next to this crate, and files that are not there.
const FILES: &[&str] = &[
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt.hex"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt-0x.hex"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/jwt-short.hex"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/builders.json"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/builders-unknown.json"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokens.json"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokens-duplicate.json"),
    concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/tokens-empty.json"),
    "/nonexistent",
    "/",
    "/dev/null",
    "",
];

/// Everything else: numbers at and past the limits, booleans, log levels, odd text.
const OTHER: &[&str] = &[
    "0",
    "1",
    "-1",
    "2000",
    "31536000000",
    "31536000001",
    "18446744073709551615",
    "99999999999999999999",
    "true",
    "false",
    "t",
    "F",
    "yes",
    "debug",
    "WARNING",
    "fatal",
    "off",
    "abc",
    "x y",
    "\u{e9}",
    "=",
    "-",
    "--",
    "--json",
    "-h",
    "",
];

/// Every value list, in the order `FE i` counts through them.
const VALUES: [&[&str]; 5] = [LISTEN, ENDPOINTS, ENDPOINT_LISTS, FILES, OTHER];

/// Builds the argument list from the input; see the module documentation.
pub fn args(data: &[u8]) -> Vec<OsString> {
    data.split(|&b| b == 0).map(|part| OsString::from_vec(arg(part))).collect()
}

fn arg(part: &[u8]) -> Vec<u8> {
    let byte = |i: usize| usize::from(part.get(i).copied().unwrap_or(0));
    match part.first() {
        Some(0xff) => {
            let name = FLAGS[byte(1) % FLAGS.len()];
            let dashes = if byte(2) & 1 == 0 { "--" } else { "-" };
            if byte(2) & 2 == 0 {
                return format!("{dashes}{name}").into_bytes();
            }
            let values = values_for(name);
            format!("{dashes}{name}={}", values[byte(3) % values.len()]).into_bytes()
        }
        Some(0xfe) => {
            let all: Vec<&str> = VALUES.iter().flat_map(|list| list.iter().copied()).collect();
            all[byte(1) % all.len()].as_bytes().to_vec()
        }
        _ => poisoned(part),
    }
}

fn values_for(flag: &str) -> &'static [&'static str] {
    match flag {
        "addr" | "metrics-addr" => LISTEN,
        "builders" | "proxies" => ENDPOINT_LISTS,
        "jwt-secret" | "builder-jwt-secrets" | "config" => FILES,
        _ => OTHER,
    }
}

/// An ASCII control character that `str::trim` keeps.
fn is_poison(b: u8) -> bool {
    b.is_ascii_control() && !b.is_ascii_whitespace() && b != 0x0b
}

fn poisoned(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 4);
    for (i, part) in raw.split(|&b| b == b',').enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(part);
        if !part.iter().copied().any(is_poison) {
            out.push(0x01);
        }
    }
    out
}

/// Whether every value an address flag could take in `args` is safe to resolve. Any argument
/// that could be read as an address flag counts, even where the parser would take it as a value.
pub fn hermetic(args: &[OsString]) -> bool {
    args.iter().enumerate().all(|(i, arg)| {
        let arg = arg.as_encoded_bytes();
        let Some(flag) = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-")) else {
            return true;
        };
        let (name, inline) = match flag.iter().position(|&b| b == b'=') {
            Some(eq) => (&flag[..eq], Some(&flag[eq + 1..])),
            None => (flag, None),
        };
        let value = inline.or_else(|| args.get(i + 1).map(|next| next.as_encoded_bytes()));
        match (name, value) {
            (_, None) => true,
            (b"addr" | b"metrics-addr", Some(value)) => safe(value, LISTEN, false),
            (b"builders" | b"proxies", Some(value)) => safe(value, ENDPOINTS, true),
            _ => true,
        }
    })
}

/// A value is safe when it is not UTF-8 (refused before use), or when each part (each
/// comma-separated entry of a list, trimmed; the whole value otherwise) is empty, a known safe
/// word or contains a control character.
fn safe(value: &[u8], known: &[&str], list: bool) -> bool {
    let Ok(text) = std::str::from_utf8(value) else { return true };
    let part_safe = |part: &str| known.contains(&part) || part.bytes().any(is_poison);
    if list {
        text.split(',').map(str::trim).all(|part| part.is_empty() || part_safe(part))
    } else {
        part_safe(text)
    }
}
