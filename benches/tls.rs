//! TLS to an https:// execution client, with the proxy's own client settings
//! (`tls::settings`, rustls with ring) against a rustls server in memory: a full handshake
//! (ECDSA P-256 certificate from a private CA, as `--builder-ca` gives), and 1 MiB of
//! application data each way through an established connection (a newPayload body out, a
//! getPayload answer back). What the release profile's size setting for the TLS crates costs
//! (`Cargo.toml`) is read here: run it with and without those lines.
//!
//! `cargo bench --bench tls` (needs the default feature `tls`)

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ConnectionCommon, ServerConfig, ServerConnection, SideData};

const MIB: usize = 1 << 20;

/// A CA (its certificate, DER) and a server configuration whose certificate it signed for
/// 127.0.0.1.
fn server() -> (Vec<u8>, Arc<ServerConfig>) {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = params.self_signed(&ca_key).expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .expect("server config");
    (ca.der().to_vec(), Arc::new(config))
}

/// Moves every TLS record each side has to the other until neither has any.
fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut wire = Vec::with_capacity(64 * 1024);
    while records(client, server, &mut wire) | records(server, client, &mut wire) {}
}

/// Hands every record `from` has to `to`; false when it had none.
fn records<A: SideData, B: SideData>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    wire: &mut Vec<u8>,
) -> bool {
    let mut moved = false;
    while from.wants_write() {
        wire.clear();
        from.write_tls(wire).expect("records out");
        let mut input = &wire[..];
        while !input.is_empty() {
            to.read_tls(&mut input).expect("records in");
            to.process_new_packets().expect("accepted");
        }
        moved = true;
    }
    moved
}

fn connect(
    settings: &sync_proxy::tls::Settings,
    config: &Arc<ServerConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let mut client = ClientConnection::new(settings.clone(), name).expect("client");
    let mut server = ServerConnection::new(config.clone()).expect("server");
    pump(&mut client, &mut server);
    assert!(!client.is_handshaking() && !server.is_handshaking(), "handshake finished");
    (client, server)
}

/// Writes `data` on one side a record's worth (16 KiB) at a time, taking the records out after
/// each, then hands them to the other side and reads it all back.
fn send<A: SideData, B: SideData>(
    from: &mut ConnectionCommon<A>,
    to: &mut ConnectionCommon<B>,
    data: &[u8],
    got: &mut [u8],
) {
    let mut wire = Vec::with_capacity(MIB + 64 * 1024);
    for piece in data.chunks(16 * 1024) {
        from.writer().write_all(piece).expect("plaintext in");
        while from.wants_write() {
            from.write_tls(&mut wire).expect("records out");
        }
    }
    let mut input = &wire[..];
    let mut read = 0;
    while !input.is_empty() || read < got.len() {
        if !input.is_empty() {
            to.read_tls(&mut input).expect("records in");
            to.process_new_packets().expect("accepted");
        }
        match to.reader().read(&mut got[read..]) {
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => assert!(!input.is_empty(), "all sent"),
            Err(e) => panic!("plaintext out: {e}"),
        }
    }
}

fn tls(c: &mut Criterion) {
    let (ca, config) = server();
    let (settings, _) = sync_proxy::tls::settings(&[ca], false).expect("client settings");
    let mut group = c.benchmark_group("tls");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    group.bench_function("handshake", |b| b.iter(|| connect(&settings, &config)));
    let data: Vec<u8> = (0..MIB).map(|i| b"0123456789abcdef"[i % 16]).collect();
    let mut got = vec![0u8; MIB];
    let (mut client, mut server) = connect(&settings, &config);
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("1mib_to_el", |b| b.iter(|| send(&mut *client, &mut *server, &data, &mut got)));
    group.bench_function("1mib_from_el", |b| b.iter(|| send(&mut *server, &mut *client, &data, &mut got)));
    assert_eq!(got, data, "the bytes came through");
    group.finish();
}

criterion_group!(benches, tls);
criterion_main!(benches);
