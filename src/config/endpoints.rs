//! `--builders`, `--builders-file` and `--proxies` entries: Go's URL rules, `http://` and
//! (with the `tls` feature) `https://`, resolved at start-up with IPv4 first. Knows no files
//! beyond splitting a builders file's text into entries.

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

/// Go's `http` scheme default, used when an entry has no port.
const DEFAULT_HTTP_PORT: u16 = 80;
/// The same for `https://`.
const DEFAULT_HTTPS_PORT: u16 = 443;
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

/// The entries of a `--builders-file`, with their line numbers: one EL per line (commas split
/// a line as in `--builders`); blank lines and everything after a `#` are ignored (a URL cannot
/// contain `#`: fragments are refused).
pub(super) fn builders_file_entries(text: &str) -> Vec<(usize, &str)> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default();
        entries.extend(line.split(',').map(str::trim).filter(|e| !e.is_empty()).map(|e| (i + 1, e)));
    }
    entries
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
    let (builders, none) = match list {
        BuilderList::Flag(text) => (
            parse_endpoint_list(text, "--builders")?,
            "no builders given: use --builders host:port[,host:port…]".to_owned(),
        ),
        BuilderList::File(path) => {
            let text = read_file(path, "--builders-file")?;
            let path = show_path(path);
            let builders = builders_file_entries(&text)
                .into_iter()
                .map(|(line, entry)| {
                    parse_endpoint(entry)
                        .map_err(|e| e.context(format!("--builders-file {path} line {line}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            (
                builders,
                format!("--builders-file {path} lists no execution client (one host:port or URL per line)"),
            )
        }
    };
    if builders.is_empty() {
        return Err(ConfigError(none));
    }
    Ok(builders)
}

/// An endpoint entry taken apart, before any DNS.
pub(super) struct EndpointParts {
    /// `host[:port]` as written.
    pub(super) authority: String,
    /// The host to resolve: lower-cased, without IPv6 brackets.
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) path: String,
    pub(super) url: String,
}

fn bad_endpoint(entry: &str, why: &str) -> ConfigError {
    err!("bad URL {entry:?}: {why}")
}

pub(super) fn split_endpoint(entry: &str) -> Result<EndpointParts, ConfigError> {
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
        None if https => DEFAULT_HTTPS_PORT,
        None => DEFAULT_HTTP_PORT,
        Some(text) => match text.parse::<u16>() {
            Ok(port) if port > 0 && text.bytes().all(|b| b.is_ascii_digit()) => port,
            _ => return Err(bad(&format!("invalid port {text:?}"))),
        },
    };
    let host = host.to_ascii_lowercase();
    let scheme = if https { "https" } else { "http" };
    let shown = if bracketed { format!("[{host}]") } else { host.clone() };
    let url = format!("{scheme}://{shown}:{port}{path}");
    Ok(EndpointParts { authority: authority.to_owned(), host, port, path, url })
}

/// RFC 3986: `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`.
pub(super) fn is_scheme(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_util::*;

    #[test]
    fn builders_keep_their_order_and_skip_empty_entries() {
        let config = run(&["--builders", " 127.0.0.1:1 ,, 127.0.0.2:2,", "--proxies", ", ,"]);
        let names: Vec<&str> = config.builders.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:1", "127.0.0.2:2"]);
        assert!(config.proxies.is_empty());
    }

    #[test]
    fn no_builders_is_an_error() {
        for args in [&[][..], &["--builders", ""], &["--builders", " , ,"], &["--proxies", BUILDER]] {
            assert_eq!(error(args), "no builders given: use --builders host:port[,host:port…]", "{args:?}");
        }
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
            let [entry, url, host, path, first] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                panic!("bad case {line:?}");
            };
            // "-" marks a host that would need DNS: check the syntax only.
            if first == "-" {
                let parts = split_endpoint(entry).unwrap();
                assert_eq!(
                    (parts.url.as_str(), parts.authority.as_str(), parts.path.as_str()),
                    (url, host, path)
                );
                continue;
            }
            let endpoint = parse_endpoint(entry).unwrap();
            let got = (
                endpoint.name.as_str(),
                endpoint.url.as_str(),
                endpoint.host.as_str(),
                endpoint.path.as_str(),
            );
            assert_eq!(got, (entry, url, host, path), "{entry:?}");
            assert_eq!(endpoint.addrs[0], first.parse().unwrap(), "{entry:?}");
        }
        // The name is trimmed; localhost resolves IPv4 first.
        let endpoint = parse_endpoint(" \t127.0.0.1:8551 ").unwrap();
        assert_eq!((endpoint.name.as_str(), endpoint.host.as_str()), ("127.0.0.1:8551", "127.0.0.1:8551"));
        let endpoint = parse_endpoint("localhost:8551").unwrap();
        assert_eq!(endpoint.addrs[0], loopback(8551));
        let first_v6 = endpoint.addrs.iter().position(SocketAddr::is_ipv6);
        let last_v4 = endpoint.addrs.iter().rposition(SocketAddr::is_ipv4);
        if let (Some(v6), Some(v4)) = (first_v6, last_v4) {
            assert!(v4 < v6, "{:?}", endpoint.addrs);
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
            assert_eq!(endpoint.server_name(), server_name, "{entry:?}");
            assert_eq!(endpoint.addrs[0], first.parse().unwrap(), "{entry:?}");
        }
        assert!(!parse_endpoint("http://127.0.0.1:1").unwrap().is_https());
        assert_eq!(parse_endpoint("127.0.0.1:1").unwrap().server_name(), "127.0.0.1");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn without_the_tls_feature_https_and_builder_ca_are_refused() {
        for entry in ["https://127.0.0.1:8551", "HTTPS://127.0.0.1:8551"] {
            let message = parse_endpoint(entry).unwrap_err().0;
            assert_mentions(&message, &["https is not supported", entry, "cargo feature `tls`"]);
        }
        let file = TempFile::new("-----BEGIN CERTIFICATE-----\n");
        assert_errors(&[(&["--builder-ca", file.arg()], &["--builder-ca", "cargo feature `tls`"])]);
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
        // A bad entry names its flag.
        assert_mentions(
            &error(&["--builders", "127.0.0.1:1,ws://127.0.0.1:2"]),
            &["--builders", "only http://", "ws://127.0.0.1:2"],
        );
        assert_errors(&[(&["--proxies", "127.0.0.1:x"], &["--proxies", "invalid port", "127.0.0.1:x"])]);
    }

    #[test]
    fn builders_file() {
        let text = "# primary first\n127.0.0.1:8551\n\n  http://127.0.0.1:8552/  # spare\n127.0.0.1:8553,127.0.0.1:8554\n";
        let expected = [
            (2, "127.0.0.1:8551"),
            (4, "http://127.0.0.1:8552/"),
            (5, "127.0.0.1:8553"),
            (5, "127.0.0.1:8554"),
        ];
        assert_eq!(builders_file_entries(text), expected);

        let file = TempFile::new("# ELs\n127.0.0.1:8552\n127.0.0.1:8551\n");
        let config = run(&["--builders-file", file.arg()]);
        let names: Vec<&str> = config.builders.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(names, vec!["127.0.0.1:8552", "127.0.0.1:8551"]);
        assert_eq!(config.reload.builders, BuilderList::File(file.path.clone()));
        let both = error(&["--builders", BUILDER, "--builders-file", file.arg()]);
        assert_mentions(&both, &["--builders and --builders-file exclude each other"]);

        // A bad file names its line; an empty or missing one is refused.
        let file = TempFile::new("127.0.0.1:8551\n\nhttps://el:8551\n");
        assert_mentions(&error(&["--builders-file", file.arg()]), &["--builders-file", "line 3", "https"]);
        let empty = TempFile::new("# nothing yet\n\n");
        assert_mentions(&error(&["--builders-file", empty.arg()]), &["lists no execution client"]);
        assert_mentions(&error(&["--builders-file", "/nonexistent/els"]), &["cannot read --builders-file"]);
    }
}
