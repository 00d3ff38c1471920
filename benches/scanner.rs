//! The JSON-RPC scanner on newPayload bodies of 1 KiB, 128 KiB, 1 MiB and 8 MiB, with the keys
//! in the order beacon nodes send them and reversed, whole and fed in 64 KiB chunks as a body
//! arrives from a socket, and on answers: bytes per second.
//!
//! `cargo bench --bench scanner`

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use sync_proxy::rpc;

fn scan_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan_request");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for size in common::SIZES {
        let Some(spec) = common::new_payload(size) else {
            eprintln!("scan_request/{size}: no body of that size; skipped");
            continue;
        };
        let reversed = common::reversed(&spec);
        for (order, body) in [("spec_order", &spec), ("reversed", &reversed)] {
            let scan = rpc::scan_request(body).expect("generated bodies scan");
            assert!(scan.timestamp.is_some(), "{size} {order}: the timestamp is found");
            group.throughput(Throughput::Bytes(body.len() as u64));
            group.bench_with_input(BenchmarkId::new(order, size), body, |b, body| {
                b.iter(|| rpc::scan_request(black_box(body)))
            });
        }
    }
    group.finish();
}

/// The chunk a socket read hands the incremental scanner in the proxy (its read buffer).
const CHUNK: usize = 64 << 10;

/// The same bodies, whole (`scan_request`) next to fed in 64 KiB chunks (`RequestScan`), so
/// that the cost of resuming shows as the ratio of the two.
fn scan_requests_chunked(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan_request_chunked");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for size in common::SIZES {
        let Some(body) = common::new_payload(size) else { continue };
        let chunked = |body: &[u8]| {
            let mut scan = rpc::RequestScan::new();
            let mut end = 0;
            while end < body.len() {
                end = (end + CHUNK).min(body.len());
                if scan.feed(&body[..end]).is_err() {
                    break;
                }
            }
            scan.finish(body)
        };
        assert_eq!(chunked(&body), rpc::scan_request(&body), "{size}");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("whole", size), &body, |b, body| {
            b.iter(|| rpc::scan_request(black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("chunks_64k", size), &body, |b, body| {
            b.iter(|| chunked(black_box(body)))
        });
    }
    group.finish();
}

fn scan_responses(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan_response");
    group.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Bytes(common::VALID_ANSWER.len() as u64));
    group.bench_function("newPayload_VALID", |b| {
        b.iter(|| rpc::scan_response(black_box(common::VALID_ANSWER)))
    });
    for size in common::SIZES {
        let Some(request) = common::new_payload(size) else { continue };
        let answer = common::get_payload_answer(&request);
        assert!(rpc::scan_response(&answer).is_ok());
        group.throughput(Throughput::Bytes(answer.len() as u64));
        group.bench_with_input(BenchmarkId::new("getPayload", size), &answer, |b, body| {
            b.iter(|| rpc::scan_response(black_box(body)))
        });
    }
    group.finish();
}

criterion_group!(benches, scan_requests, scan_requests_chunked, scan_responses);
criterion_main!(benches);
