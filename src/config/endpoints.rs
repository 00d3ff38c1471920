//! `--builders`, `--builders-file` and `--proxies` entries: Go's URL rules, `http://` and
//! (with the `tls` feature) `https://`, resolved at start-up with IPv4 first. Reads no file but
//! a `--builders-file`.

use std::net::{Ipv6Addr, SocketAddr, ToSocketAddrs};

use super::files::{read_file, show_path};
use super::{BuilderList, ConfigError};
use crate::tls;

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

/// Why a build without the cargo feature `tls` refuses `https://` and `--builder-ca`.
pub(super) const NO_TLS: &str = "this build has no TLS (it was built without the cargo feature `tls`)";

/// Parses one --builders/--proxies list entry (Go rules: trimmed; empty entries skipped by the
/// caller; "http://" prepended when the entry has no scheme; "https://" taken when the build has
/// TLS, else refused with "https is not supported: ..."), resolving the host with ToSocketAddrs.
///
/// Unlike Go, which prepends "http://" only when the entry does not start with "http", a host
/// that merely starts with "http" (`httpbin:80`) works too, because the scheme is recognised by
/// its `://`.
pub fn parse_endpoint(entry: &str) -> Result<Endpoint, ConfigError> {
    let (mut endpoint, host, port) = split_endpoint(entry)?;
    let bad = |why: &str| bad_endpoint(entry.trim(), why);
    if endpoint.is_https() {
        tls::check_server_name(&host).map_err(|why| bad(&why))?;
    }
    let addrs = (host.as_str(), port).to_socket_addrs();
    endpoint.addrs = addrs.map_err(|e| bad(&format!("cannot resolve {host:?}: {e}")))?.collect();
    // Stable sort: IPv4 first, the resolver's order otherwise, so "localhost" means 127.0.0.1
    // as it does for Go.
    endpoint.addrs.sort_by_key(SocketAddr::is_ipv6);
    if endpoint.addrs.is_empty() {
        return Err(bad("the host resolved to no address"));
    }
    Ok(endpoint)
}

/// Go's `parseURLs`: split on commas, trim, skip empty entries.
pub(super) fn parse_endpoint_list(list: &str, flag: &str) -> Result<Vec<Endpoint>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| parse_endpoint(entry).map_err(|e| e.context(flag)))
        .collect()
}

/// The builders of `--builders` or of a `--builders-file` (blocking: file read and name
/// lookups); at least one.
pub(super) fn read_builders(list: &BuilderList) -> Result<Vec<Endpoint>, ConfigError> {
    let builders = match list {
        BuilderList::Flag(text) => parse_endpoint_list(text, "--builders")?,
        BuilderList::File(path) => {
            let mut builders = Vec::new();
            // One line as one --builders list; a URL cannot contain `#` (fragments are refused),
            // so everything after one is a comment.
            for (i, line) in read_file(path, "--builders-file")?.lines().enumerate() {
                let place = format!("--builders-file {} line {}", show_path(path), i + 1);
                builders.extend(parse_endpoint_list(line.split('#').next().unwrap_or_default(), &place)?);
            }
            builders
        }
    };
    if !builders.is_empty() {
        return Ok(builders);
    }
    Err(match list {
        BuilderList::Flag(_) => err!("no builders given: use --builders host:port[,host:port…]"),
        BuilderList::File(path) => err!(
            "--builders-file {} lists no execution client (one host:port or URL per line)",
            show_path(path)
        ),
    })
}

fn bad_endpoint(entry: &str, why: &str) -> ConfigError {
    err!("bad URL {entry:?}: {why}")
}

/// An entry taken apart, before any DNS: the endpoint without addresses, and the host (lower-cased,
/// without IPv6 brackets) and port to resolve.
pub(super) fn split_endpoint(entry: &str) -> Result<(Endpoint, String, u16), ConfigError> {
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
                return Err(err!("https is not supported: {entry:?}: {NO_TLS}; use http://"));
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
        let after = "unexpected text after the ] of the IPv6 address";
        let port =
            if tail.is_empty() { None } else { Some(tail.strip_prefix(':').ok_or_else(|| bad(after))?) };
        (literal, port, true)
    } else {
        let (host, port) =
            authority.rsplit_once(':').map_or((authority, None), |(host, port)| (host, Some(port)));
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
        // The schemes' default ports, as in Go.
        None if https => 443,
        None => 80,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(bad(&format!("invalid port {text:?}"))),
        },
    };
    let host = host.to_ascii_lowercase();
    let scheme = if https { "https" } else { "http" };
    let shown = if bracketed { format!("[{host}]") } else { host.clone() };
    let url = format!("{scheme}://{shown}:{port}{path}");
    Ok((
        Endpoint { name: entry.to_owned(), url, host: authority.to_owned(), path, addrs: Vec::new() },
        host,
        port,
    ))
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
pub(super) fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}
