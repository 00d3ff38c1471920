//! TLS for `https://` execution clients: one rustls client session per EL connection, used as
//! a byte transformer between that connection's socket and its HTTP bytes. The session lives
//! in the shell, beside the socket (`shell::ElSockets`); the connection state machine
//! (`upstream::Conn`) only ever sees plaintext.
//!
//! rustls is sans-IO: it takes ciphertext and plaintext and hands back the other, and never
//! touches a socket or a clock. [`Session`] only adds the glue that moves bytes between it and
//! whatever `Read + Write` the caller passes in (the EL's non-blocking socket in the shell, an
//! in-memory pipe in the unit tests): handshake steps, plaintext out of decrypted records, and
//! encrypted records out of the request's bytes. It knows no HTTP, no mio and no deadlines: the
//! handshake runs under the connection's connect deadline, which the connection owns.
//!
//! Bounds: rustls buffers at most 16 KiB of decrypted plaintext and one record of ciphertext on
//! the way in (and this module drains plaintext before it reads more), and at most
//! [`MAX_PENDING`] bytes on the way out: a request is fed in only after what was already
//! encrypted reached the socket.
//!
//! Without the cargo feature `tls` the same names exist, but a [`Session`] cannot be made: the
//! configuration refuses `https://` at start-up, so the rest of the proxy needs no `cfg`.

use std::io::{self, Read, Write};

/// How a connection's TLS handshake stands after the bytes that could move have moved.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Done (or no TLS on this connection): HTTP may flow.
    Done,
    /// Waiting for the server's bytes (or for room in the socket).
    Pending,
    /// The handshake failed, with a reason for the log (a certificate error, an alert, EOF).
    Failed(String),
}

/// Most bytes (plaintext not yet encrypted plus records not yet sent) one session holds for
/// the socket; a full request body waits in its own `Rc`, not here.
pub const MAX_PENDING: usize = 64 * 1024;

/// Why a build without the feature cannot do what was asked.
#[cfg(not(feature = "tls"))]
const NO_TLS: &str = "this build has no TLS (it was built without the cargo feature `tls`)";

#[cfg(feature = "tls")]
pub use enabled::*;

#[cfg(not(feature = "tls"))]
pub use disabled::*;

#[cfg(feature = "tls")]
mod enabled {
    use std::io::{self, IoSlice, Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    use super::{Handshake, MAX_PENDING};

    /// Log lines name the module, not this half of it.
    const LOG_TARGET: &str = "sync_proxy::tls";

    /// Whether this build can reach `https://` execution clients.
    pub const ENABLED: bool = true;

    /// The shared client settings: root certificates and the ring provider.
    pub type Settings = Arc<ClientConfig>;

    /// Where the trusted roots came from, for the start-up log line.
    #[derive(Debug, Default)]
    pub struct Roots {
        pub system: usize,
        pub extra: usize,
        /// Why some system certificates could not be read (their store may be missing).
        pub problems: Vec<String>,
    }

    /// The DER certificates in a PEM file's text (`--builder-ca`); at least one, or why not.
    pub fn parse_pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let mut certs = Vec::new();
        let mut check = RootCertStore::empty();
        for item in CertificateDer::pem_slice_iter(pem) {
            let cert = item.map_err(|e| format!("not a PEM certificate file: {e}"))?;
            certs.push(cert.as_ref().to_vec());
            check.add(cert).map_err(|e| format!("a certificate cannot be a root: {e}"))?;
        }
        if certs.is_empty() {
            return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".to_owned());
        }
        Ok(certs)
    }

    /// Whether `host` can name a TLS server (a DNS name or an IP address), checked at start-up.
    pub fn check_server_name(host: &str) -> Result<(), String> {
        ServerName::try_from(host).map(|_| ()).map_err(|_| format!("{host:?} cannot be a TLS server name"))
    }

    /// Client settings that trust `extra` (DER, from `--builder-ca`) and, when `system` is
    /// set, the system's root certificates. The ring provider builds with a C compiler alone,
    /// so the static (musl) build keeps working.
    pub fn settings(extra: &[Vec<u8>], system: bool) -> Result<(Settings, Roots), String> {
        let mut roots = RootCertStore::empty();
        let mut report = Roots::default();
        if system {
            let found = rustls_native_certs::load_native_certs();
            report.problems = found.errors.iter().map(ToString::to_string).collect();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            report.system = added;
        }
        for der in extra {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| format!("--builder-ca: a certificate cannot be used as a root: {e}"))?;
            report.extra += 1;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS settings: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok((Arc::new(config), report))
    }

    /// The settings for this run's `https://` clients, said in one start-up line: the
    /// system's roots plus `--builder-ca`'s. Missing system roots are not fatal (a private CA
    /// may be all that is needed), but worth a warning.
    pub fn start(extra: &[Vec<u8>]) -> Result<Settings, String> {
        let (settings, roots) = settings(extra, true)?;
        for problem in &roots.problems {
            log::warn!(target: LOG_TARGET, "TLS: reading the system's root certificates: {problem}");
        }
        if roots.system + roots.extra == 0 {
            log::warn!(
                "TLS: no root certificate at all: every https:// builder will fail; give --builder-ca"
            );
        } else {
            log::info!(
                target: LOG_TARGET,
                "TLS for https:// builders: {} system root certificate(s), {} from --builder-ca",
                roots.system,
                roots.extra
            );
        }
        Ok(settings)
    }

    /// One TLS client session; the SNI name and the name checked against the certificate is
    /// the URL's host (a DNS name or an IP address).
    pub struct Session {
        conn: ClientConnection,
    }

    impl Session {
        pub fn new(settings: &Settings, host: &str) -> Result<Session, String> {
            // DNS names compare without case; certificates and SNI carry them in lower case.
            let name = ServerName::try_from(host.to_ascii_lowercase())
                .map_err(|_| format!("{host:?} cannot be a TLS server name"))?;
            let mut conn = ClientConnection::new(settings.clone(), name).map_err(|e| e.to_string())?;
            conn.set_buffer_limit(Some(MAX_PENDING));
            Ok(Session { conn })
        }

        /// Moves handshake bytes both ways until the socket has nothing more to give.
        pub fn handshake(&mut self, socket: &mut (impl Read + Write)) -> Handshake {
            loop {
                if let Err(e) = self.send(socket) {
                    return Handshake::Failed(format!("TLS handshake failed: {e}"));
                }
                if !self.conn.is_handshaking() {
                    return Handshake::Done;
                }
                match self.conn.read_tls(socket) {
                    Ok(0) => {
                        return Handshake::Failed(
                            "TLS handshake failed: the server closed the connection".to_owned(),
                        )
                    }
                    Ok(_) => {
                        if let Err(e) = self.conn.process_new_packets() {
                            // The alert rustls queued tells the server why; best effort.
                            let _ = self.send(socket);
                            return Handshake::Failed(format!("TLS handshake failed: {e}"));
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Handshake::Pending,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Handshake::Failed(format!("TLS handshake failed: {e}")),
                }
            }
        }

        /// Plaintext from the server, like `Read::read` on a plain socket: `Ok(0)` is the end
        /// (close_notify, or the socket's EOF, which many servers send without one; the HTTP
        /// reader decides whether the answer was whole), `WouldBlock` means nothing yet, and a
        /// TLS error is an error (the connection is then treated as reset).
        pub fn read(&mut self, socket: &mut (impl Read + Write), buf: &mut [u8]) -> io::Result<usize> {
            loop {
                // Plaintext already decrypted goes first, so rustls's buffer never fills.
                match self.conn.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                match self.conn.read_tls(socket) {
                    // The next pass through the reader reports the end (UnexpectedEof or 0).
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                if let Err(e) = self.conn.process_new_packets() {
                    let _ = self.send(socket);
                    return Err(io::Error::other(e));
                }
                // A key update may want an answer. A send that fails here shows again at the next
                // write; reading goes on, so an answer that arrived whole is not lost.
                let _ = self.send(socket);
            }
        }

        /// A writer of plaintext that encrypts into `socket`, for the HTTP head-and-body writer.
        pub fn writer<'a, S: Write>(&'a mut self, socket: &'a mut S) -> Writer<'a, S> {
            Writer { session: self, socket }
        }

        /// Whether encrypted bytes still wait for room in the socket.
        pub fn wants_write(&self) -> bool {
            self.conn.wants_write()
        }

        /// Sends what rustls has encrypted; `WouldBlock` is not an error (a write edge follows).
        pub fn send(&mut self, socket: &mut impl Write) -> io::Result<usize> {
            let mut moved = 0;
            while self.conn.wants_write() {
                match self.conn.write_tls(socket) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => moved += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(moved)
        }
    }

    /// See [`Session::writer`]. Plaintext is taken only once what was encrypted before has
    /// reached the socket, so a session never holds more than [`MAX_PENDING`] bytes; when the
    /// socket is full, `write` says `WouldBlock` like the socket itself.
    pub struct Writer<'a, S: Write> {
        session: &'a mut Session,
        socket: &'a mut S,
    }

    impl<S: Write> Write for Writer<'_, S> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }

        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.session.send(self.socket)?;
            if self.session.conn.wants_write() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.session.conn.writer().write_vectored(bufs)?;
            // What does not fit in the socket now goes out on the next write edge.
            self.session.send(self.socket)?;
            if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            self.session.send(self.socket).map(|_| ())
        }
    }
}

#[cfg(not(feature = "tls"))]
mod disabled {
    use std::convert::Infallible;
    use std::io::{self, Read, Write};

    use super::Handshake;

    /// Whether this build can reach `https://` execution clients.
    pub const ENABLED: bool = false;

    pub fn parse_pem_certificates(_pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        Err(super::NO_TLS.to_owned())
    }

    pub fn check_server_name(_host: &str) -> Result<(), String> {
        Err(super::NO_TLS.to_owned())
    }

    pub fn start(_extra: &[Vec<u8>]) -> Result<Settings, String> {
        Err(super::NO_TLS.to_owned())
    }

    /// Never made ([`start`] refuses): without TLS, `https://` is refused at start-up.
    #[derive(Debug, Clone)]
    pub struct Settings {
        _never: (),
    }

    /// Never made, like [`Settings`].
    pub enum Session {}

    impl Session {
        pub fn new(_settings: &Settings, _host: &str) -> Result<Session, String> {
            Err(super::NO_TLS.to_owned())
        }

        pub fn handshake(&mut self, _socket: &mut (impl Read + Write)) -> Handshake {
            match *self {}
        }

        pub fn read(&mut self, _socket: &mut (impl Read + Write), _buf: &mut [u8]) -> io::Result<usize> {
            match *self {}
        }

        pub fn writer<'a, S: Write>(&'a mut self, _socket: &'a mut S) -> Writer<'a, S> {
            match *self {}
        }

        pub fn wants_write(&self) -> bool {
            match *self {}
        }

        pub fn send(&mut self, _socket: &mut impl Write) -> io::Result<usize> {
            match *self {}
        }
    }

    /// Never made, like [`Session`].
    pub struct Writer<'a, S: Write> {
        never: Infallible,
        _socket: &'a mut S,
    }

    impl<S: Write> Write for Writer<'_, S> {
        fn write(&mut self, _buf: &[u8]) -> io::Result<usize> {
            match self.never {}
        }

        fn flush(&mut self) -> io::Result<()> {
            match self.never {}
        }
    }
}

/// Plain sockets and TLS sessions read alike for the shell, which hands the plaintext on.
pub fn read(
    tls: Option<&mut Session>,
    socket: &mut (impl Read + Write),
    buf: &mut [u8],
) -> io::Result<usize> {
    match tls {
        Some(session) => session.read(socket, buf),
        None => socket.read(buf),
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    //! A client session against a rustls server over an in-memory "socket", with
    //! certificates made here: no network, no clock.

    use std::io::{self, Read, Write};
    use std::sync::Arc;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use rustls::{ServerConfig, ServerConnection};

    use super::*;
    use crate::http;

    /// The client's socket: what the server sent, what the client wrote, and how much room
    /// the client's side has before a write would block.
    struct Pipe {
        to_client: Vec<u8>,
        to_server: Vec<u8>,
        room: usize,
        eof: bool,
    }

    impl Pipe {
        fn new() -> Pipe {
            Pipe { to_client: Vec::new(), to_server: Vec::new(), room: usize::MAX, eof: false }
        }
    }

    impl Read for Pipe {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.to_client.is_empty() {
                return if self.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
            }
            let n = buf.len().min(self.to_client.len());
            buf[..n].copy_from_slice(&self.to_client[..n]);
            self.to_client.drain(..n);
            Ok(n)
        }
    }

    impl Write for Pipe {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room.saturating_sub(self.to_server.len()));
            if n == 0 && !buf.is_empty() {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.to_server.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    struct Pki {
        ca: Vec<u8>,
        server: Arc<ServerConfig>,
    }

    /// A CA and a server certificate it signed for `names`.
    fn pki(names: &[&str]) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let leaf = rcgen::CertificateParams::new(names).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        Pki { ca: ca.der().to_vec(), server: Arc::new(server) }
    }

    /// Lets the server take what the client wrote (its plaintext is appended to `got`) and answer; its TLS error, if any.
    fn serve_into(server: &mut ServerConnection, pipe: &mut Pipe, got: &mut Vec<u8>) -> Option<String> {
        while !pipe.to_server.is_empty() {
            let mut input = &pipe.to_server[..];
            let n = server.read_tls(&mut input).unwrap();
            pipe.to_server.drain(..n);
            if let Err(e) = server.process_new_packets() {
                let _ = server.write_tls(&mut pipe.to_client);
                return Some(e.to_string());
            }
            let _ = server.reader().read_to_end(got);
        }
        while server.wants_write() {
            server.write_tls(&mut pipe.to_client).unwrap();
        }
        None
    }

    fn serve(server: &mut ServerConnection, pipe: &mut Pipe) -> Option<String> {
        serve_into(server, pipe, &mut Vec::new())
    }

    /// Runs the handshake to its end (a few round trips at most).
    fn handshake(client: &mut Session, server: &mut ServerConnection, pipe: &mut Pipe) -> Handshake {
        for _ in 0..10 {
            match client.handshake(pipe) {
                Handshake::Pending => {}
                done_or_failed => return done_or_failed,
            }
            serve(server, pipe);
        }
        panic!("the handshake did not end")
    }

    fn connected(names: &[&str], host: &str) -> (Session, ServerConnection, Pipe) {
        let pki = pki(names);
        let (settings, roots) = settings(std::slice::from_ref(&pki.ca), false).unwrap();
        assert_eq!((roots.system, roots.extra), (0, 1));
        let mut client = Session::new(&settings, host).unwrap();
        let mut server = ServerConnection::new(pki.server).unwrap();
        let mut pipe = Pipe::new();
        assert_eq!(handshake(&mut client, &mut server, &mut pipe), Handshake::Done);
        (client, server, pipe)
    }

    #[test]
    fn a_request_and_its_answer_cross_intact_and_close_notify_is_the_end() {
        let (mut client, mut server, mut pipe) = connected(&["el.example"], "el.example");
        let (head, body) = (b"POST / HTTP/1.1\r\n\r\n".to_vec(), vec![7u8; 100_000]);
        let mut written = 0;
        let mut got = Vec::new();
        while written < head.len() + body.len() || client.wants_write() {
            client.send(&mut pipe).unwrap();
            http::write_head_body(&mut client.writer(&mut pipe), &head, &body, &mut written).unwrap();
            assert_eq!(serve_into(&mut server, &mut pipe, &mut got), None);
        }
        assert_eq!(got, [head, body].concat());
        server.writer().write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").unwrap();
        server.send_close_notify();
        serve(&mut server, &mut pipe);
        let mut buf = [0u8; 256];
        let n = client.read(&mut pipe, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        assert_eq!(client.read(&mut pipe, &mut buf).unwrap(), 0, "close_notify reads as the end");
    }

    #[test]
    fn nothing_yet_would_block_and_a_bare_eof_is_the_end() {
        let (mut client, _server, mut pipe) = connected(&["127.0.0.1"], "127.0.0.1");
        let mut buf = [0u8; 64];
        let e = client.read(&mut pipe, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        pipe.eof = true;
        assert_eq!(client.read(&mut pipe, &mut buf).unwrap(), 0, "EOF without close_notify");
    }

    #[test]
    fn a_full_socket_holds_the_session_to_its_bound() {
        let (mut client, _server, mut pipe) = connected(&["el.example"], "el.example");
        pipe.room = 1000;
        let body = vec![1u8; 1 << 20];
        let mut written = 0;
        let (_, done) = http::write_head_body(
            &mut client.writer(&mut pipe),
            b"POST / HTTP/1.1\r\n\r\n",
            &body,
            &mut written,
        )
        .unwrap();
        assert!(!done, "a full socket blocks the write");
        assert!(written <= MAX_PENDING, "{written} bytes taken into the session");
        assert!(client.wants_write(), "encrypted bytes wait for the socket");
        // Another write before the socket drains takes nothing more.
        let before = written;
        let _ = http::write_head_body(&mut client.writer(&mut pipe), b"", &body, &mut written).unwrap();
        assert_eq!(written, before);
    }

    #[test]
    fn certificates_the_roots_or_the_name_do_not_vouch_for_fail_the_handshake() {
        // An unknown issuer: no roots at all.
        let pki_unknown = pki(&["el.example"]);
        let (no_roots, _) = settings(&[], false).unwrap();
        let mut client = Session::new(&no_roots, "el.example").unwrap();
        let mut server = ServerConnection::new(pki_unknown.server).unwrap();
        let mut pipe = Pipe::new();
        match handshake(&mut client, &mut server, &mut pipe) {
            Handshake::Failed(why) => assert!(why.contains("UnknownIssuer"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert!(serve(&mut server, &mut pipe).is_some_and(|e| e.contains("alert")), "the server is told");
        // A trusted certificate for another name.
        let pki_other = pki(&["other.example"]);
        let (trusting, _) = settings(std::slice::from_ref(&pki_other.ca), false).unwrap();
        let mut client = Session::new(&trusting, "el.example").unwrap();
        let mut server = ServerConnection::new(pki_other.server).unwrap();
        let mut pipe = Pipe::new();
        match handshake(&mut client, &mut server, &mut pipe) {
            Handshake::Failed(why) => {
                assert!(why.contains("NotValidForName") || why.contains("not valid for name"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_that_is_not_tls_fails_the_handshake() {
        let (settings, _) = settings(&[], false).unwrap();
        let mut client = Session::new(&settings, "el.example").unwrap();
        let mut pipe = Pipe::new();
        assert_eq!(client.handshake(&mut pipe), Handshake::Pending);
        pipe.to_client.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        match client.handshake(&mut pipe) {
            Handshake::Failed(why) => assert!(why.starts_with("TLS handshake failed: "), "{why}"),
            other => panic!("{other:?}"),
        }
        let mut closed = Pipe::new();
        closed.eof = true;
        let mut client = Session::new(&settings, "el.example").unwrap();
        assert_eq!(
            client.handshake(&mut closed),
            Handshake::Failed("TLS handshake failed: the server closed the connection".into())
        );
    }

    #[test]
    fn pem_files_need_at_least_one_certificate() {
        let pki = pki(&["el.example"]);
        let pem = CertificateDer::from(pki.ca.clone());
        let text = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pem.as_ref())
        );
        assert_eq!(parse_pem_certificates(text.as_bytes()).unwrap(), vec![pki.ca]);
        assert!(parse_pem_certificates(b"hello\n").unwrap_err().contains("no PEM certificate"));
        assert!(Session::new(&settings(&[], false).unwrap().0, "not a name!").is_err());
        assert!(check_server_name("::1").is_ok() && check_server_name("bad name").is_err());
    }
}
