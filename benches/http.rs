//! HTTP/1.1 reading: a beacon node's request (realistic head, 1 KiB and 128 KiB newPayload
//! bodies, fed whole and in 64 KiB reads as the event loop does) through `RequestReader`, an
//! execution client's answer through `ResponseReader`, and the forwarded head being written.
//!
//! `cargo bench --bench http`

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use sync_proxy::http::{self, Limits, RequestEvent, RequestReader, ResponseReader};

/// What the event loop reads from a socket at once.
const READ_SIZE: usize = 64 * 1024;

/// A head as Lodestar (node-fetch) sends it, with a 32-byte-secret HS256 token.
fn request_head(content_length: usize) -> Vec<u8> {
    format!(
        "POST / HTTP/1.1\r\n\
         Content-Type: application/json\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpYXQiOjE3MzIxNzI4MDAsImlkIjoibG9kZXN0YXIifQ.\
         q0Qd1K2jCv0h1mG4q0a2YtE9n3b8Q5d7QeXk2Yl8Xo4\r\n\
         Accept: */*\r\n\
         Content-Length: {content_length}\r\n\
         User-Agent: node-fetch/1.0 (+https://github.com/bitinn/node-fetch)\r\n\
         Accept-Encoding: gzip,deflate\r\n\
         Host: 127.0.0.1:8551\r\n\
         Connection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

/// An answer head as geth writes it.
fn response_head(content_length: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n\
         Content-Type: application/json\r\n\
         Vary: Origin\r\n\
         Date: Sat, 21 Nov 2026 08:00:00 GMT\r\n\
         Content-Length: {content_length}\r\n\r\n"
    )
    .into_bytes()
}

/// Feeds `wire` in reads of `read_size` and returns the request, as the event loop would.
fn read_request(wire: &[u8], read_size: usize) -> http::Request {
    let mut reader = RequestReader::new(Limits::default());
    for read in wire.chunks(read_size) {
        let mut input = read;
        while !input.is_empty() {
            let step = reader.advance(input);
            input = &input[step.consumed..];
            match step.event {
                Some(Ok(RequestEvent::Request(req))) => return req,
                Some(Ok(RequestEvent::Continue | RequestEvent::Head)) => {}
                Some(Err(e)) => panic!("benchmark request rejected: {e}"),
                None if step.consumed == 0 => break,
                None => {}
            }
        }
    }
    panic!("benchmark request incomplete")
}

fn read_response(wire: &[u8]) -> http::Response {
    let mut reader = ResponseReader::new(Limits::default());
    let mut input = wire;
    loop {
        let step = reader.advance(input);
        input = &input[step.consumed..];
        match step.event {
            Some(Ok(resp)) => return resp,
            Some(Err(e)) => panic!("benchmark answer rejected: {e}"),
            None if input.is_empty() => panic!("benchmark answer incomplete"),
            None => {}
        }
    }
}

fn requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_reader");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let head_only = request_head(0);
    group.throughput(Throughput::Bytes(head_only.len() as u64));
    group.bench_function("head_only", |b| b.iter(|| read_request(black_box(&head_only), READ_SIZE)));
    for size in ["1k", "128k"] {
        let Some(body) = common::new_payload(size) else { continue };
        let mut wire = request_head(body.len());
        wire.extend_from_slice(&body);
        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("head_and_body", size), &wire, |b, wire| {
            b.iter(|| read_request(black_box(wire), READ_SIZE))
        });
    }
    group.finish();
}

fn responses(c: &mut Criterion) {
    let mut group = c.benchmark_group("response_reader");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let mut wire = response_head(common::VALID_ANSWER.len());
    wire.extend_from_slice(common::VALID_ANSWER);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("newPayload_VALID", |b| b.iter(|| read_response(black_box(&wire))));
    group.finish();
}

fn forward_head(c: &mut Criterion) {
    let mut group = c.benchmark_group("write_forward_head");
    group.sample_size(30).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let req = read_request(&request_head(0), READ_SIZE);
    let fwd = http::Forward {
        path: "/",
        host: "127.0.0.1:8552",
        authorization: None,
        client: "127.0.0.1",
        content_length: 1388,
    };
    let mut out = Vec::with_capacity(1024);
    group.bench_function("lodestar_head", |b| {
        b.iter(|| {
            out.clear();
            http::write_forward_head(&mut out, black_box(&req.head), &fwd);
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, requests, responses, forward_head);
criterion_main!(benches);
