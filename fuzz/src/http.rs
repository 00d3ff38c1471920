//! The HTTP readers driven as their callers drive them, with the caller's assumptions checked
//! at every step: `advance` never claims more bytes than it was given, it never stalls (uses no
//! byte yet reports nothing) on non-empty input, and no body exceeds `max_body`.
//!
//! The stall check matters because the event loop stops calling `advance` when a step uses no
//! byte and reports nothing, and then reuses its read buffer: bytes a reader stalled on would be
//! lost. After an error nothing more is fed, as the connection is answered and closed.

use sync_proxy::http::{HttpError, Limits, RequestEvent, RequestReader, Response, ResponseReader, Step};

/// Feeds `pieces` to one request reader as the event loop does (pipelined requests on one
/// connection) and returns every event, ending at the first error.
pub fn read_requests(limits: Limits, pieces: &[&[u8]]) -> Vec<Result<RequestEvent, HttpError>> {
    let mut reader = RequestReader::new(limits);
    let mut events = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let step = reader.advance(rest);
            rest = checked_rest(rest, &step);
            match step.event {
                None => {}
                Some(Err(e)) => {
                    events.push(Err(e));
                    return events;
                }
                Some(Ok(event)) => {
                    if let RequestEvent::Request(req) = &event {
                        check_request(req, limits);
                    }
                    events.push(Ok(event));
                }
            }
        }
    }
    events
}

/// Feeds `pieces` to response readers as an upstream connection does, with a fresh reader for
/// each answer so that pipelined answers are read in turn. When the input ends without an
/// error, the peer is taken to have closed the connection and `finish` has the last word.
/// Returns every answer, ending at the first error.
pub fn read_responses(limits: Limits, pieces: &[&[u8]]) -> Vec<Result<Response, HttpError>> {
    let mut reader = ResponseReader::new(limits);
    let mut answers = Vec::new();
    for piece in pieces {
        let mut rest = *piece;
        while !rest.is_empty() {
            let step = reader.advance(rest);
            rest = checked_rest(rest, &step);
            assert!(reader.started(), "a reader that was given bytes says no answer started");
            match step.event {
                None => {}
                Some(Err(e)) => {
                    answers.push(Err(e));
                    return answers;
                }
                Some(Ok(resp)) => {
                    check_body(&resp.body, limits);
                    answers.push(Ok(resp));
                    reader = ResponseReader::new(limits);
                }
            }
        }
    }
    let last = reader.finish();
    if let Ok(resp) = &last {
        check_body(&resp.body, limits);
    }
    answers.push(last);
    answers
}

/// What is left of `rest` after `step`, once the step is known to be one a caller can follow.
fn checked_rest<'a, E>(rest: &'a [u8], step: &Step<E>) -> &'a [u8] {
    assert!(step.consumed <= rest.len(), "advance consumed {} of {} bytes", step.consumed, rest.len());
    assert!(
        step.consumed > 0 || step.event.is_some(),
        "advance used none of {} bytes and reported nothing: the caller would drop them",
        rest.len()
    );
    &rest[step.consumed..]
}

/// A request's body is within the cap and, without Transfer-Encoding, exactly as long as its
/// Content-Length says (0 when there is none).
fn check_request(req: &sync_proxy::http::Request, limits: Limits) {
    check_body(&req.body, limits);
    if req.head.header("transfer-encoding").is_none() {
        let declared = req.head.header("content-length").map_or(Some(0), |value| {
            std::str::from_utf8(value).ok().and_then(|text| text.trim().parse::<usize>().ok())
        });
        assert_eq!(declared, Some(req.body.len()), "body length differs from Content-Length");
    }
}

fn check_body(body: &[u8], limits: Limits) {
    assert!(
        body.len() <= limits.max_body,
        "a body of {} bytes passed max_body {}",
        body.len(),
        limits.max_body
    );
}
