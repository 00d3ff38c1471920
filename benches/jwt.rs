//! JWT: minting a token (as done for each execution client with its own secret), verifying a
//! beacon node's token (done for every request under `--jwt-secret`), and the token cache that
//! re-mints only every few seconds.
//!
//! `cargo bench --bench jwt`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use sync_proxy::jwt::{self, Secret, TokenCache};

const NOW: u64 = 1_795_000_000;

fn secret() -> Secret {
    Secret::from_bytes(*b"0123456789abcdef0123456789abcdef")
}

fn jwt(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let secret = secret();
    group.bench_function("mint", |b| b.iter(|| jwt::mint(&secret, black_box(NOW), None)));
    group.bench_function("mint_with_id", |b| b.iter(|| jwt::mint(&secret, black_box(NOW), Some("lodestar"))));
    let token = jwt::mint(&secret, NOW, Some("lodestar"));
    group.bench_function("verify", |b| {
        b.iter(|| jwt::verify(&secret, black_box(token.as_bytes()), NOW, jwt::IAT_LEEWAY_SECS))
    });
    let header = format!("Bearer {token}");
    group.bench_function("bearer_token_and_verify", |b| {
        b.iter(|| {
            let token = jwt::bearer_token(black_box(header.as_bytes())).expect("a bearer header");
            jwt::verify(&secret, token, NOW, jwt::IAT_LEEWAY_SECS)
        })
    });
    let mut cache = TokenCache::new(secret.clone(), Some("sync-proxy".to_string()));
    group.bench_function("token_cache_hit", |b| b.iter(|| cache.header_value(black_box(NOW)).len()));
    let mut cache = TokenCache::new(secret.clone(), None);
    let mut now = NOW;
    group.bench_function("token_cache_remint", |b| {
        b.iter(|| {
            now += jwt::REMINT_AFTER_SECS;
            cache.header_value(black_box(now)).len()
        })
    });
    group.finish();
}

criterion_group!(benches, jwt);
criterion_main!(benches);
