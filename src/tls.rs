//! TLS for `https://` execution clients: one rustls client session per EL connection, used as
//! a byte transformer between that connection's socket and its HTTP writer and reader.
//!
//! rustls is sans-IO: it takes ciphertext and plaintext and hands back the other, and never
//! touches a socket or a clock. [`Session`] only adds the glue that moves bytes between it and
//! whatever `Read + Write` the caller passes in (the EL's non-blocking socket in the proxy, an
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
            log::warn!("TLS: reading the system's root certificates: {problem}");
        }
        if roots.system + roots.extra == 0 {
            log::warn!("TLS: no root certificate at all: every https:// builder will fail; give --builder-ca");
        } else {
            log::info!(
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
            let name = ServerName::try_from(host.to_owned())
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
                // A key update or an alert may want an answer; the rest waits for a write edge.
                self.send(socket)?;
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

/// Plain sockets and TLS sessions read alike for the connection's HTTP reader.
pub fn read(tls: Option<&mut Session>, socket: &mut (impl Read + Write), buf: &mut [u8]) -> io::Result<usize> {
    match tls {
        Some(session) => session.read(socket, buf),
        None => socket.read(buf),
    }
}
