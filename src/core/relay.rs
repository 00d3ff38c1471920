//! Whether an execution client's answer is relayed to the beacon node as its bytes arrive,
//! instead of being read whole first and then written (issue 15: a 13 MB getPayload answer
//! stored and forwarded took over twice as long as fetching it directly).
//!
//! An answer is relayed only when the beacon node's answer will be exactly that answer
//! whatever it says: nothing is combined, gathered (`--answer-policy safe`), picked
//! (`--payload-choice best-value`) or scanned for a status, and this client is the one
//! `policy::choose` will pick (every client before it in list order has failed, and it has
//! not answered yet). Its head must say 2xx with a `Content-Length` of at least `RELAY_MIN`:
//! error answers, chunked or close-delimited ones and everything small keep the stored path
//! exactly, byte for byte.
//!
//! It knows the exchange and the answer's head; it knows no sockets, connections or clock.

use crate::core::exchange::Exchange;
use crate::core::hold;
use crate::http::ResponseHead;
use crate::policy::{Class, Combine, Standing};

/// The smallest body relayed as it arrives. Below it, storing costs less than a loop pass
/// per read, and the stored path (with its fallback to the next client on any failure)
/// stays exactly as it was.
pub const RELAY_MIN: u64 = 64 * 1024;

/// Whether an answer with this head could be relayed at all: 2xx, framed by a
/// `Content-Length` (`len`, None when chunked or close-delimited) of at least `RELAY_MIN`.
pub fn head_qualifies(head: &ResponseHead, len: Option<u64>) -> bool {
    (200..300).contains(&head.status) && len.is_some_and(|n| n >= RELAY_MIN)
}

/// Whether client `el`'s answer, whose head is `head` with body length `len`, is relayed to
/// exchange `e`'s beacon node as it arrives.
pub fn relays(e: &Exchange, el: usize, head: &ResponseHead, len: Option<u64>) -> bool {
    let class = e.inbound.class;
    let call_relays_as_it_came = (hold::large_answer(class) || class == Class::NonEngine)
        && e.combine == Combine::FirstInOrder
        && e.gather.is_none()
        && e.pick.is_none()
        && !e.candidate
        && !e.inbound.head.method.eq_ignore_ascii_case("HEAD");
    let waited_for = !e.decided && e.reply.is_some() && e.relay.is_none();
    // `policy::choose` (first in order) picks `el` once it answers, whatever the others do.
    let chosen = e.standings.get(el) == Some(&Standing::Pending)
        && e.standings.iter().take(el).all(|s| *s == Standing::Failed);
    head_qualifies(head, len) && call_relays_as_it_came && waited_for && chosen
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::answer_policy::Clock;
    use crate::core::exchange::{Gather, Inbound, Relay, Reply};

    fn exchange(class: Class, method: &str, clients: usize) -> Exchange {
        let now = Instant::now();
        let mut inbound = Inbound::for_test(class, Some("engine_getPayloadV5"), now);
        inbound.head.method = method.into();
        inbound.id = Some(b"1".to_vec());
        let reply = Some(Reply { slot: 0, serial: 7 });
        let mut e = Exchange::new(Rc::new(inbound), reply, clients, now);
        e.combine = Combine::for_class(class);
        e
    }

    fn head(status: u16) -> ResponseHead {
        ResponseHead { status, minor: 1, headers: Vec::new(), keep_alive: true }
    }

    const BIG: Option<u64> = Some(13 << 20);

    #[test]
    fn only_a_large_2xx_answer_framed_by_its_length_qualifies() {
        assert!(head_qualifies(&head(200), Some(RELAY_MIN)));
        assert!(!head_qualifies(&head(200), Some(RELAY_MIN - 1)), "small answers are stored");
        assert!(!head_qualifies(&head(200), None), "chunked or close-delimited");
        assert!(!head_qualifies(&head(500), BIG), "an error answer is stored");
        assert!(!head_qualifies(&head(401), BIG));
        assert!(head_qualifies(&head(203), BIG));
    }

    #[test]
    fn the_primarys_large_answer_relays_while_the_beacon_node_waits() {
        let e = exchange(Class::GetPayload, "POST", 2);
        assert!(relays(&e, 0, &head(200), BIG));
        assert!(!relays(&e, 1, &head(200), BIG), "the primary is still pending: it would win");
        for class in [Class::GetBlobs, Class::GetPayloadBodies, Class::NonEngine] {
            assert!(relays(&exchange(class, "POST", 2), 0, &head(200), BIG), "{class:?}");
        }
    }

    #[test]
    fn the_next_client_relays_only_once_every_one_before_it_failed() {
        let mut e = exchange(Class::NonEngine, "POST", 3);
        e.settle(0, Standing::Failed, 3);
        assert!(relays(&e, 1, &head(200), BIG));
        assert!(!relays(&e, 2, &head(200), BIG), "client 1 is pending");
        let mut e = exchange(Class::GetPayload, "POST", 3);
        e.settle(0, Standing::Answered, 3);
        assert!(!relays(&e, 1, &head(200), BIG), "the primary answered: its answer is the one");
    }

    #[test]
    fn calls_whose_answer_is_not_the_answer_as_it_came_are_stored() {
        for class in [
            Class::NewPayload,
            Class::ForkchoiceUpdated,
            Class::GetClientVersion,
            Class::ExchangeCapabilities,
        ] {
            assert!(!relays(&exchange(class, "POST", 2), 0, &head(200), BIG), "{class:?}");
        }
        let mut e = exchange(Class::GetPayload, "POST", 2);
        e.gather = Some(Gather { wait: Duration::from_secs(1), clock: Clock::default() });
        assert!(!relays(&e, 0, &head(200), BIG), "--answer-policy safe gathers");
        let mut e = exchange(Class::GetPayload, "POST", 2);
        e.candidate = true;
        assert!(!relays(&e, 0, &head(200), BIG), "a best-BN candidate's status is read");
        assert!(!relays(&exchange(Class::NonEngine, "HEAD", 2), 0, &head(200), BIG), "HEAD has no body");
    }

    #[test]
    fn an_exchange_decided_relaying_or_without_its_beacon_node_is_not_relayed_again() {
        let mut e = exchange(Class::GetPayload, "POST", 2);
        e.reply = None;
        assert!(!relays(&e, 0, &head(200), BIG), "the beacon node left");
        let mut e = exchange(Class::GetPayload, "POST", 2);
        e.relay = Some(Relay { to: Reply { slot: 0, serial: 7 }, el: 0 });
        assert!(!relays(&e, 0, &head(200), BIG), "already relaying");
        let mut e = exchange(Class::GetPayload, "POST", 2);
        e.decided = true;
        assert!(!relays(&e, 0, &head(200), BIG));
    }
}
