//! The event loop's side of cut-through (`core::cut`): which body is a candidate, starting the
//! primary's connection once the method is known (an idle one, or one opened for it and
//! written from its connect event on), lending it the body as it arrives (all but
//! the held tail), handing it the request's job once the body is whole and valid, and
//! aborting it when the body is not JSON, its beacon node goes away, or another ordered call
//! must go first.
//!
//! At most one body streams at a time (the primary's ordered lane carries one call at a time),
//! and only to the primary: the other clients get their copies on the usual primary-first
//! path once the request is whole. The body stays in the beacon node's reader, one buffer,
//! until it becomes the request's shared body; nothing here copies it.

use std::time::Instant;

use super::{unix_now, Proxy};
use crate::core::cut::{Cut, Next};
use crate::core::exchange::{ExchangeRef, Inbound};
use crate::policy::{self, Class};
use crate::upstream::{ConnState, Job};

/// Cut-through writes to the primary only.
const PRIMARY: usize = 0;

impl Proxy {
    /// The body of beacon node `slot`'s request was accepted (`on_head`): a large one framed by
    /// `Content-Length` becomes the candidate, when none is in progress.
    pub(super) fn cut_begin(&mut self, slot: usize) {
        if self.cut.is_some() || self.builders == 0 {
            return;
        }
        let Some(down) = self.bn.get(slot) else { return };
        if down.metrics_only {
            return;
        }
        let Some((head, _, declared)) = down.reader.body_in_progress() else { return };
        if head.method == "POST" {
            self.cut = Cut::new(slot, down.serial, declared);
            if self.cut.is_some() && down.reader.reads_in_place() {
                log::debug!("reading a request body of {declared} bytes from {} in place", down.peer);
            }
        }
    }

    /// More of beacon node `slot`'s body was read.
    pub(super) fn cut_progress(&mut self, slot: usize, now: Instant) {
        let Some(cut) = self.cut.as_mut().filter(|c| c.bn == slot) else { return };
        let Some(down) = self.bn.get(slot) else { return };
        let Some((head, body, _)) = down.reader.body_in_progress() else { return };
        match cut.on_body(body) {
            Next::Wait => {}
            Next::Drop => self.cut = None,
            Next::Abort => {
                log::debug!("a streamed request from {} is not JSON: aborted at the primary", down.peer);
                if let Some(conn) = cut.conn.take() {
                    if let Some(up) = self.ups.get_mut(PRIMARY) {
                        up.abort_stream(conn);
                    }
                }
            }
            Next::Start => {
                let timeout = policy::timeout_for(cut.method(), Class::NewPayload, self.cfg.request_timeout);
                let client = down.peer.ip().to_string();
                cut.conn = self
                    .ups
                    .get_mut(PRIMARY)
                    .and_then(|up| up.start_stream(head, &client, cut.declared, timeout, now, unix_now()));
                let Some(conn) = cut.conn else { return };
                log::debug!("streaming a request from {} to the primary as it arrives", down.peer);
                if self.primary_connecting(conn) {
                    // A connection opened for it: the shell connects it (`pump`), and the body
                    // goes out from the connect event on (`up_event`).
                    self.pump(PRIMARY, now);
                } else {
                    self.cut_write(now);
                }
            }
            Next::Write => self.cut_write(now),
        }
    }

    /// Writes what the streaming connection may have of the body so far.
    pub(super) fn cut_write(&mut self, now: Instant) {
        let Some(cut) = self.cut.as_mut() else { return };
        let Some(slot) = cut.conn else { return };
        let Some((_, body, _)) = self.bn.get(cut.bn).and_then(|d| d.reader.body_in_progress()) else {
            return;
        };
        let lent = body.get(..cut.writable(body.len())).unwrap_or_default();
        let conn = self.ups.get_mut(PRIMARY).and_then(|up| up.conns.get_mut(slot)?.as_mut());
        let Some(conn) = conn.filter(|c| c.streaming && !c.dead) else {
            // The connection ended (the client closed it, it timed out, or it could not be
            // made): the request takes the usual path once whole.
            cut.conn = None;
            return;
        };
        if conn.state == ConnState::Connecting {
            return;
        }
        let (head, body) = conn.to_write_lent(lent);
        let written = self.el_sockets.write(PRIMARY, slot, head, body);
        if let Ok(wrote) = &written {
            conn.wrote(wrote.taken, now);
            conn.transport_sent(wrote.sent, wrote.holds_more, now);
        }
        if written.is_err() {
            cut.conn = None;
            if let Some(up) = self.ups.get_mut(PRIMARY) {
                up.abort_stream(slot);
            }
        }
    }

    /// The cut of beacon node `slot`'s request in progress, taken when its body is whole.
    pub(super) fn cut_take(&mut self, slot: usize) -> Option<Cut> {
        let serial = self.bn.get(slot)?.serial;
        self.cut.take_if(|c| c.bn == slot && c.serial == serial)
    }

    /// Beacon node `slot`'s request will not complete (its connection is gone, or its request
    /// could not be read): what was streamed of it is aborted.
    pub(super) fn cut_end(&mut self, slot: usize) {
        if let Some(cut) = self.cut.take_if(|c| c.bn == slot) {
            if let Some(conn) = cut.conn {
                log::debug!("a streamed request's beacon node went away: aborted at the primary");
                if let Some(up) = self.ups.get_mut(PRIMARY) {
                    up.abort_stream(conn);
                }
            }
        }
    }

    /// An ordered call from another beacon node is whole before the streaming one: it goes
    /// first everywhere, so the stream is aborted (the client never saw it whole) and starts
    /// again, from its first byte, once the lane is free.
    pub(super) fn cut_yield(&mut self, slot: usize) {
        if let Some(cut) = self.cut.as_mut().filter(|c| c.bn != slot) {
            if let Some(conn) = cut.conn.take() {
                if let Some(up) = self.ups.get_mut(PRIMARY) {
                    up.abort_stream(conn);
                }
            }
        }
    }

    /// Hands the primary's copy of exchange `r` to the connection that streamed its body;
    /// false when that connection is gone (the copy then takes the usual path).
    pub(super) fn cut_attach(
        &mut self,
        conn: usize,
        r: ExchangeRef,
        inbound: &std::rc::Rc<Inbound>,
        now: Instant,
    ) -> bool {
        let job = Job {
            inbound: inbound.clone(),
            exchange: Some(r),
            target: PRIMARY,
            timeout: inbound.timeout,
            retried: false,
            sent_at: None,
        };
        let Some(up) = self.ups.get_mut(PRIMARY) else { return false };
        if up.attach(conn, job).is_err() {
            return false;
        }
        if let Some(e) = self.exchanges.get_mut(r) {
            e.live_jobs += 1;
        }
        // Still connecting: the request goes out from the connect event on, as a dispatched one.
        if !self.primary_connecting(conn) {
            self.up_write(PRIMARY, conn, now);
        }
        true
    }

    /// Whether the primary's connection `conn` is still being made.
    fn primary_connecting(&self, conn: usize) -> bool {
        let conn = self.ups.get(PRIMARY).and_then(|up| up.conns.get(conn)?.as_ref());
        conn.is_some_and(|c| c.state == ConnState::Connecting)
    }
}
