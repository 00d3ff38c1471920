//! `https://` execution clients (issue 14, "https:// ELs"): the real proxy against ELs that
//! speak TLS on 127.0.0.1 with certificates each test makes (rcgen).
//!
//! A TLS EL here is a recording `MockEl` behind a small thread-based TLS front (rustls): the
//! front decrypts what the proxy sends and relays it byte for byte, so the mock records exactly
//! the plaintext the proxy sent and answers as usual. The front also counts finished
//! handshakes and records the TLS errors it saw (the proxy's alert when it refuses a
//! certificate), which are the positive signals the refusal tests wait for.
//!
//! Proven here: a call forwarded to an https EL and answered through it, byte-identical at the
//! EL, with SNI naming the URL's host; a private CA trusted only with `--builder-ca` (without
//! it the certificate is refused with one log line naming the EL and the reason, and the call
//! falls back to a plain http EL); a self-signed EL trusted by giving its certificate as
//! `--builder-ca`; a certificate for another name refused; a handshake that never finishes
//! failing at the connect deadline; http and https ELs side by side, in order; an EL that ends
//! each answer with close_notify; start-up errors for a bad `--builder-ca`; a large answer relayed
//! to the BN as it arrives (issue 15), as from a plain-HTTP EL.

#![cfg(feature = "tls")]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ServerConfig, ServerConnection};

use crate::util::{
    default_reply, fcu, new_payload, run_proxy_expect_exit, wait_until, MockEl, Proxy, Received, Reply,
    TempFile, TIMEOUT,
};

/// How long a relay waits on one socket before looking at the other.
const POLL: Duration = Duration::from_millis(2);

// ------------------------------------------------------------------------------ certificates

/// A private certificate authority, as an operator of ELs on their own network would run.
struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl Ca {
    fn new() -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "sync-proxy test CA");
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca { key, cert }
    }

    /// The CA certificate as a `--builder-ca` file.
    fn file(&self) -> TempFile {
        TempFile::new(&self.cert.pem())
    }

    /// A server certificate for `names` (DNS names or IP addresses), signed by this CA.
    fn issue(&self, names: &[&str]) -> Identity {
        let key = KeyPair::generate().expect("server key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("server certificate");
        Identity { chain: vec![cert.der().clone()], key: key.serialize_der() }
    }
}

/// What a TLS server presents: its certificate chain and private key (PKCS#8 DER).
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: Vec<u8>,
}

/// A certificate that signs itself for `names`: what `openssl req -x509` makes for a test EL.
/// Also returned as PEM, for `--builder-ca`.
fn self_signed(names: &[&str]) -> (Identity, String) {
    let key = KeyPair::generate().expect("key");
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("params");
    let cert = params.self_signed(&key).expect("self-signed certificate");
    (Identity { chain: vec![cert.der().clone()], key: key.serialize_der() }, cert.pem())
}

// ------------------------------------------------------------------------------ the TLS EL

/// An https EL on 127.0.0.1: a TLS front relaying to a recording `MockEl`. Dropping it stops
/// the front (and the mock).
struct TlsEl {
    el: MockEl,
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Shared {
    stopped: AtomicBool,
    handshakes: AtomicUsize,
    /// TLS errors the front saw, such as the proxy's alert refusing its certificate.
    errors: Mutex<Vec<String>>,
    /// The server name each client asked for (SNI), per finished or failed handshake.
    server_names: Mutex<Vec<Option<String>>>,
}

impl TlsEl {
    fn start(identity: Identity) -> TlsEl {
        TlsEl::with(identity, default_reply)
    }

    fn with(identity: Identity, behaviour: impl Fn(&Received) -> Reply + Send + Sync + 'static) -> TlsEl {
        let el = MockEl::with(behaviour);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.key));
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(identity.chain, key)
            .expect("server certificate and key");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the TLS front");
        listener.set_nonblocking(true).expect("non-blocking listener");
        let addr = listener.local_addr().expect("TLS front address");
        let shared = Arc::new(Shared::default());
        let (backend, state) = (el.addr(), Arc::clone(&shared));
        let acceptor = thread::spawn(move || accept(listener, backend, config, state));
        TlsEl { el, addr, shared, acceptor: Some(acceptor) }
    }

    /// `https://localhost:PORT`: the name the test certificates carry.
    fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// `https://127.0.0.1:PORT`: checked against the certificate's IP address.
    fn ip_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    fn errors(&self) -> Vec<String> {
        crate::util::lock(&self.shared.errors).clone()
    }

    fn server_names(&self) -> Vec<Option<String>> {
        crate::util::lock(&self.shared.server_names).clone()
    }

    /// Waits until the front saw a TLS error containing `text`; returns it.
    #[track_caller]
    fn wait_error(&self, text: &str) -> String {
        let mut found = None;
        wait_until(&format!("the TLS EL sees an error with {text:?}"), TIMEOUT, || {
            found = self.errors().into_iter().find(|e| e.contains(text));
            found.is_some()
        });
        found.unwrap_or_default()
    }
}

impl Drop for TlsEl {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, backend: SocketAddr, config: Arc<ServerConfig>, shared: Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let (config, shared) = (Arc::clone(&config), Arc::clone(&shared));
                thread::spawn(move || relay(stream, backend, config, shared));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

fn waits(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

/// One connection: TLS from the proxy, plaintext to the mock and back. When the mock closes
/// the connection, the front sends close_notify and closes too.
fn relay(mut tls: TcpStream, backend: SocketAddr, config: Arc<ServerConfig>, shared: Arc<Shared>) {
    let Ok(mut plain) = TcpStream::connect(backend) else { return };
    let Ok(mut conn) = ServerConnection::new(config) else { return };
    conn.set_buffer_limit(None);
    let _ = tls.set_nodelay(true);
    let _ = tls.set_read_timeout(Some(POLL));
    // Only the TLS side waits (briefly): the mock's side is polled, so a large request does
    // not wait on a quiet mock between records.
    let _ = plain.set_nonblocking(true);
    let mut buf = vec![0u8; 64 * 1024];
    let mut handshaking = true;
    while !shared.stopped.load(Ordering::SeqCst) {
        while conn.wants_write() {
            if conn.write_tls(&mut tls).is_err() {
                return;
            }
        }
        match conn.read_tls(&mut tls) {
            Ok(0) => return,
            Ok(_) => {
                if let Err(e) = conn.process_new_packets() {
                    let name = conn.server_name().map(str::to_owned);
                    crate::util::lock(&shared.server_names).push(name);
                    crate::util::lock(&shared.errors).push(e.to_string());
                    let _ = conn.write_tls(&mut tls);
                    return;
                }
            }
            Err(e) if waits(&e) => {}
            Err(_) => return,
        }
        if handshaking && !conn.is_handshaking() {
            handshaking = false;
            crate::util::lock(&shared.server_names).push(conn.server_name().map(str::to_owned));
            shared.handshakes.fetch_add(1, Ordering::SeqCst);
        }
        loop {
            match conn.reader().read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if write_all_polling(&mut plain, &buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        match plain.read(&mut buf) {
            Ok(0) => {
                conn.send_close_notify();
                while conn.wants_write() {
                    if conn.write_tls(&mut tls).is_err() {
                        break;
                    }
                }
                return;
            }
            Ok(n) => {
                if conn.writer().write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if waits(&e) => {}
            Err(_) => return,
        }
    }
}

/// `write_all` on a non-blocking socket: waits out `WouldBlock` a moment at a time.
fn write_all_polling(stream: &mut TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if waits(&e) => thread::sleep(POLL),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------ tests

#[track_caller]
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}: {} bytes differ from the {} sent:\n{}",
        got.len(),
        want.len(),
        String::from_utf8_lossy(got)
    );
}

#[test]
fn a_call_reaches_an_https_el_through_a_private_ca_byte_for_byte() {
    let ca = Ca::new();
    let el = TlsEl::start(ca.issue(&["localhost", "127.0.0.1"]));
    let ca_file = ca.file();
    let proxy = Proxy::start(&["--builders", &el.url(), "--builder-ca", ca_file.arg()]);
    proxy.wait_log("1 from --builder-ca", TIMEOUT);
    let body = new_payload(1, 100);
    let response = proxy.bn().post(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["result"]["status"], "VALID", "{}", response.text());
    let received = el.el.wait_requests(1, TIMEOUT);
    assert_same_bytes(&received[0].body, &body, "the body at the EL");
    assert_eq!(
        received[0].header("host"),
        Some(format!("localhost:{}", el.addr.port()).as_str()),
        "Host names the EL as written"
    );
    assert_eq!(el.server_names(), vec![Some("localhost".to_string())], "SNI is the URL's host");
    assert!(el.errors().is_empty(), "{:?}", el.errors());
}

#[test]
fn without_builder_ca_a_self_signed_el_is_refused_with_one_log_line_and_the_call_falls_back() {
    let tls_el = TlsEl::start(self_signed(&["localhost"]).0);
    let plain = MockEl::start();
    let proxy = Proxy::start(&["--builders", &format!("{},{}", tls_el.url(), plain.http_url())]);
    let body = new_payload(1, 100);
    let response = proxy.bn().post(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["result"]["status"], "VALID", "the http EL answered: {}", response.text());
    assert_same_bytes(&plain.wait_requests(1, TIMEOUT)[0].body, &body, "the body at the http EL");
    // The refusal, as the operator and the EL see it.
    let line = proxy.wait_log(&format!("{} is down: TLS handshake failed", tls_el.url()), TIMEOUT);
    assert!(line.contains("UnknownIssuer"), "the reason is named: {line}");
    tls_el.wait_error("alert");
    let said = proxy.logs().iter().filter(|l| l.contains("TLS handshake failed")).count();
    assert_eq!(said, 1, "one line for the episode: {:?}", proxy.logs());
    assert!(tls_el.el.received().is_empty(), "nothing reached the refused EL");
    assert_eq!(tls_el.handshakes(), 0);
}

#[test]
fn a_certificate_for_another_name_is_refused() {
    let ca = Ca::new();
    let tls_el = TlsEl::start(ca.issue(&["el.example"]));
    let plain = MockEl::start();
    let ca_file = ca.file();
    let builders = format!("{},{}", tls_el.url(), plain.url());
    let proxy = Proxy::start(&["--builders", &builders, "--builder-ca", ca_file.arg()]);
    let response = proxy.bn().post(&new_payload(1, 100));
    assert_eq!(response.status, 200, "{}", response.text());
    let line = proxy.wait_log(&format!("{} is down: TLS handshake failed", tls_el.url()), TIMEOUT);
    assert!(line.contains("NotValidForName") || line.contains("not valid for name"), "{line}");
    tls_el.wait_error("alert");
    assert!(tls_el.el.received().is_empty(), "nothing reached the refused EL");
    assert_eq!(plain.received().len(), 1);
}

#[test]
fn http_and_https_els_side_by_side_get_every_call_in_order() {
    let ca = Ca::new();
    let first = TlsEl::start(ca.issue(&["127.0.0.1"]));
    let second = MockEl::start();
    let third = TlsEl::start(ca.issue(&["localhost"]));
    let ca_file = ca.file();
    let builders = format!("{},{},{}", first.ip_url(), second.http_url(), third.url());
    let proxy = Proxy::start(&["--builders", &builders, "--builder-ca", ca_file.arg()]);
    let mut bn = proxy.bn();
    let bodies: Vec<Vec<u8>> = (1..=6u64)
        .map(|n| if n % 2 == 1 { new_payload(n, 100 + n) } else { fcu(n, Some(100 + n)) })
        .collect();
    for body in &bodies {
        let response = bn.post(body);
        assert_eq!(response.status, 200, "{}", response.text());
    }
    for (name, el) in
        [("first (https, IP)", &first.el), ("second (http)", &second), ("third (https)", &third.el)]
    {
        let received = el.wait_requests(bodies.len(), TIMEOUT);
        for (got, want) in received.iter().zip(&bodies) {
            assert_same_bytes(&got.body, want, name);
        }
    }
    // Kept-alive TLS connections carry several calls: far fewer handshakes than calls.
    assert!(first.handshakes() < bodies.len(), "{} handshakes", first.handshakes());
    assert_eq!(first.server_names().first(), Some(&None), "no SNI for an IP address, as RFC 6066 says");
}

#[test]
fn an_https_el_that_closes_after_each_answer_is_reconnected() {
    let ca = Ca::new();
    let el = TlsEl::with(ca.issue(&["localhost"]), |r| default_reply(r).then_close());
    let ca_file = ca.file();
    let proxy = Proxy::start(&["--builders", &el.url(), "--builder-ca", ca_file.arg()]);
    let mut bn = proxy.bn();
    for n in 1..=3u64 {
        let body = new_payload(n, 100 + n);
        let response = bn.post(&body);
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.json()["result"]["status"], "VALID", "{}", response.text());
    }
    assert_eq!(el.el.wait_requests(3, TIMEOUT).len(), 3);
    wait_until("three handshakes", TIMEOUT, || el.handshakes() == 3);
    assert!(!proxy.logs().iter().any(|l| l.contains("is down")), "{:?}", proxy.logs());
}

#[test]
fn a_bad_builder_ca_file_is_refused_at_start_up() {
    let not_pem = TempFile::new("not a certificate\n");
    let (status, _, stderr) =
        run_proxy_expect_exit(&["--builders", "https://127.0.0.1:1", "--builder-ca", not_pem.arg()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--builder-ca") && stderr.contains("no PEM certificate"), "{stderr}");
    let (status, _, stderr) =
        run_proxy_expect_exit(&["--builders", "https://127.0.0.1:1", "--builder-ca", "/nonexistent/ca.pem"]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read --builder-ca file"), "{stderr}");
}

#[test]
fn an_https_el_that_never_finishes_the_handshake_fails_at_the_connect_deadline() {
    // The kernel completes the TCP handshake for a listener nobody accepts from, so the proxy
    // connects, sends its ClientHello, and never hears back.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_url = format!("https://localhost:{}", silent.local_addr().expect("address").port());
    let plain = MockEl::start();
    let proxy = Proxy::start(&["--builders", &format!("{silent_url},{}", plain.url())]);
    let body = new_payload(1, 100);
    let response = proxy.bn().post(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.json()["result"]["status"], "VALID", "the http EL answered: {}", response.text());
    proxy.wait_log(&format!("{silent_url} is down: cannot connect"), TIMEOUT);
    assert_same_bytes(&plain.wait_requests(1, TIMEOUT)[0].body, &body, "the body at the http EL");
}

#[test]
fn a_self_signed_el_is_trusted_when_its_certificate_is_the_builder_ca() {
    let (identity, pem) = self_signed(&["localhost"]);
    let el = TlsEl::start(identity);
    let ca_file = TempFile::new(&pem);
    let proxy = Proxy::start(&["--builders", &el.url(), "--builder-ca", ca_file.arg()]);
    let body = new_payload(1, 100);
    let response = proxy.bn().post(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_same_bytes(&el.el.wait_requests(1, TIMEOUT)[0].body, &body, "the body at the EL");
}

#[test]
fn a_builder_ca_without_an_https_builder_is_said_to_be_unused() {
    let ca_file = Ca::new().file();
    let el = MockEl::start();
    let proxy = Proxy::start(&["--builders", &el.url(), "--builder-ca", ca_file.arg()]);
    proxy.wait_log("--builder-ca is given but no builder is https://", TIMEOUT);
    assert_eq!(proxy.bn().post(&new_payload(1, 100)).status, 200);
}

#[test]
fn a_large_payload_crosses_tls_byte_for_byte_to_https_and_http_els() {
    let ca = Ca::new();
    let tls_el = TlsEl::start(ca.issue(&["localhost"]));
    let plain = MockEl::start();
    let ca_file = ca.file();
    let builders = format!("{},{}", tls_el.url(), plain.url());
    let proxy = Proxy::start(&["--builders", &builders, "--builder-ca", ca_file.arg()]);
    // Far more than the 64 KiB a TLS session may hold: the write path must wait for the socket.
    let pad = "ab".repeat(1 << 20);
    let body = crate::util::rpc_body(
        1,
        "engine_newPayloadV3",
        serde_json::json!([{"timestamp": "0x10", "extraData": pad}, [], "0x00"]),
    );
    let response = proxy.bn().post(&body);
    assert_eq!(response.status, 200, "{}", response.text());
    assert_same_bytes(&tls_el.el.wait_requests(1, TIMEOUT)[0].body, &body, "the body at the https EL");
    assert_same_bytes(&plain.wait_requests(1, TIMEOUT)[0].body, &body, "the body at the http EL");
}

#[test]
fn a_large_answer_from_an_https_el_is_relayed_as_it_arrives() {
    // Issue 15: the relay takes the plaintext `ElSockets` decrypted, as from a plain socket.
    let ca = Ca::new();
    let gate = crate::util::Gate::default();
    let answer = format!(r#"{{"jsonrpc":"2.0","id":1,"result":"{}"}}"#, "c".repeat(2 << 20)).into_bytes();
    let (reply, g) = (answer.clone(), gate.clone());
    let el = TlsEl::with(ca.issue(&["localhost"]), move |_| Reply::json(reply.clone()).gated(1 << 20, &g));
    let ca_file = ca.file();
    let proxy = Proxy::start(&["--builders", &el.url(), "--builder-ca", ca_file.arg()]);
    let mut bn = proxy.bn();
    bn.send_post(&[], &crate::util::rpc_body(1, "engine_getPayloadV5", serde_json::json!(["0x01"])));
    let got = crate::relay::wait_partial(&mut bn, 512 * 1024);
    assert!(got < answer.len(), "the answer arrived whole before the EL finished it");
    gate.open();
    let response = bn.read_response();
    assert_eq!(response.status, 200);
    assert_same_bytes(&response.body, &answer, "the relayed answer");
}
