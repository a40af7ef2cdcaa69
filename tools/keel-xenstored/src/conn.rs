//! One client's state: who it is, its input decoder, watches, transactions and the queue of
//! encoded replies and events waiting to be sent.

use std::collections::{HashMap, VecDeque};

use crate::store::Transaction;
use crate::wire::Decoder;
use crate::DomId;

/// Who is on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// A privileged socket client acting as Dom0; `may_become_domain` while no message has
    /// been processed yet (the Keel handshake must come first).
    Dom0 {
        /// Whether a `KeelDomainConnect` would still be accepted.
        may_become_domain: bool,
    },
    /// A DomU's relayed ring.
    Domain(DomId),
}

/// Whether the connection is usable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Requests are processed.
    Open,
    /// Input is ignored; close once the queued output is sent (a refused handshake).
    Draining,
    /// Dropped: close now.
    Closed,
}

/// One watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watch {
    /// Absolute path or special name.
    pub path: String,
    /// The token, echoed in events.
    pub token: Vec<u8>,
    /// Bytes to strip from event paths for a watch given relative.
    pub relative_prefix: usize,
}

/// One client's state.
#[derive(Debug)]
pub struct Connection {
    pub(crate) peer: Peer,
    pub(crate) state: State,
    pub(crate) decoder: Decoder,
    pub(crate) watches: Vec<Watch>,
    pub(crate) transactions: HashMap<u32, Transaction>,
    pub(crate) next_tx: u32,
    /// Encoded messages; `true` marks a reply (counted against the outstanding limit).
    out: VecDeque<(Vec<u8>, bool)>,
    /// Bytes of the front message already sent.
    out_sent: usize,
    out_bytes: usize,
    replies_queued: usize,
}

impl Connection {
    pub(crate) fn new(peer: Peer) -> Self {
        Self {
            peer,
            state: State::Open,
            decoder: Decoder::new(),
            watches: Vec::new(),
            transactions: HashMap::new(),
            next_tx: 1,
            out: VecDeque::new(),
            out_sent: 0,
            out_bytes: 0,
            replies_queued: 0,
        }
    }

    /// The domain it acts for.
    pub fn domid(&self) -> DomId {
        match self.peer {
            Peer::Dom0 { .. } => 0,
            Peer::Domain(d) => d,
        }
    }

    /// Who it is.
    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// Its state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Its watches.
    pub fn watches(&self) -> &[Watch] {
        &self.watches
    }

    /// Open transactions.
    pub fn transaction_count(&self) -> usize {
        self.transactions.len()
    }

    /// Bytes queued to send.
    pub fn queued_bytes(&self) -> usize {
        self.out_bytes - self.out_sent
    }

    /// Replies queued (not events).
    pub fn queued_replies(&self) -> usize {
        self.replies_queued
    }

    /// Queues one encoded message.
    pub(crate) fn push_out(&mut self, msg: Vec<u8>, reply: bool) {
        self.out_bytes += msg.len();
        self.replies_queued += usize::from(reply);
        self.out.push_back((msg, reply));
    }

    /// The next bytes to send (part of the front message).
    pub fn output(&self) -> &[u8] {
        self.out
            .front()
            .map_or(&[][..], |(m, _)| &m[self.out_sent..])
    }

    /// Marks `n` bytes of [`Connection::output`] as sent.
    pub(crate) fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some((front, reply)) = self.out.front() else {
                return;
            };
            let left = front.len() - self.out_sent;
            if n < left {
                self.out_sent += n;
                return;
            }
            n -= left;
            self.out_bytes -= front.len();
            self.replies_queued -= usize::from(*reply);
            self.out_sent = 0;
            self.out.pop_front();
        }
    }

    /// Drops everything it holds (closing).
    pub(crate) fn clear(&mut self) {
        self.watches.clear();
        self.transactions.clear();
        self.out.clear();
        self.out_sent = 0;
        self.out_bytes = 0;
        self.replies_queued = 0;
        self.decoder = Decoder::new();
    }

    /// A fresh transaction id: not 0, not in use.
    pub(crate) fn new_tx_id(&mut self) -> u32 {
        loop {
            let id = self.next_tx;
            self.next_tx = self.next_tx.wrapping_add(1);
            if id != 0 && !self.transactions.contains_key(&id) {
                return id;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_consumed_across_messages_and_replies_counted() {
        let mut c = Connection::new(Peer::Domain(1));
        c.push_out(b"abc".to_vec(), true);
        c.push_out(b"de".to_vec(), false);
        c.push_out(b"f".to_vec(), true);
        assert_eq!((c.queued_bytes(), c.queued_replies()), (6, 2));
        assert_eq!(c.output(), b"abc");
        c.consume(2);
        assert_eq!(c.output(), b"c");
        assert_eq!(c.queued_replies(), 2);
        c.consume(2);
        assert_eq!(c.output(), b"e");
        assert_eq!((c.queued_bytes(), c.queued_replies()), (2, 1));
        c.consume(10);
        assert_eq!((c.queued_bytes(), c.queued_replies()), (0, 0));
        assert!(c.output().is_empty());
    }

    #[test]
    fn transaction_ids_skip_zero() {
        let mut c = Connection::new(Peer::Domain(1));
        c.next_tx = u32::MAX;
        assert_eq!(c.new_tx_id(), u32::MAX);
        assert_eq!(c.new_tx_id(), 1);
    }
}
