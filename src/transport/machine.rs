//! The transport state machine (docs/transport.md, rules T1–T9), as a pure function:
//! `(state, event) -> (state, actions)`. All I/O (delivering, storing, connecting) is done by
//! the runtime, which feeds the outcomes back in as events.

use crate::api::TransportState::{self, Down, SfSuspended, StoreAndForward, Suspended, Up};

/// The parts of the spec the transitions depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// `storeAndForward.enabled`
    pub store_and_forward: bool,
    /// `loadAtInit`: connect at start-up, on resume, and keep retrying while Down.
    pub load_at_init: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The worker starts hosting the transport. `restored` is the state saved before the
    /// restart (None for a new transport); `queued` whether the queue holds transactions.
    Start {
        restored: Option<TransportState>,
        queued: bool,
    },
    /// The user suspended the transport (`spec.suspended: true`); `queued` whether the queue
    /// holds transactions.
    Suspend { queued: bool },
    /// The user resumed it (`spec.suspended: false`).
    Resume,
    /// A producer sent a transaction.
    Arrived,
    /// A direct delivery was answered 2xx.
    Delivered,
    /// A direct delivery found the host unreachable (refused, timeout, 408, 429, 5xx).
    Unreachable,
    /// A connect attempt (start-up, resume, retry) succeeded.
    Connected,
    /// A connect attempt failed.
    ConnectFailed,
    /// The forwarder delivered every queued transaction: the queue is empty.
    Drained,
    /// Time to live or max storage emptied the queue without forwarding.
    QueueEmptied,
}

/// For logs: what happened, in words (`start (restored Store and Forward, queue not empty)`).
impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let queue = |queued: bool| {
            if queued {
                "queue not empty"
            } else {
                "queue empty"
            }
        };
        match self {
            Event::Start {
                restored: Some(state),
                queued,
            } => write!(f, "start (restored {state}, {})", queue(*queued)),
            Event::Start {
                restored: None,
                queued,
            } => write!(f, "start (new, {})", queue(*queued)),
            Event::Suspend { queued } => write!(f, "suspend ({})", queue(*queued)),
            Event::Resume => f.write_str("resume"),
            Event::Arrived => f.write_str("a transaction arrived"),
            Event::Delivered => f.write_str("delivered"),
            Event::Unreachable => f.write_str("the host is unreachable"),
            Event::Connected => f.write_str("connected"),
            Event::ConnectFailed => f.write_str("connect failed"),
            Event::Drained => f.write_str("queue drained"),
            Event::QueueEmptied => f.write_str("queue emptied by its limits"),
        }
    }
}

/// Why a transaction fails instead of being delivered or stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Suspended, and Store and Forward is disabled (T6).
    SuspendedWithoutStore,
    /// The host is unreachable and Store and Forward is disabled.
    UnreachableWithoutStore,
}

impl FailReason {
    pub fn message(self) -> &'static str {
        match self {
            Self::SuspendedWithoutStore => {
                "the transport is suspended and Store and Forward is disabled"
            }
            Self::UnreachableWithoutStore => {
                "the host is unreachable and Store and Forward is disabled"
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Deliver the transaction in hand to the host (connecting first if needed).
    Deliver,
    /// Append the transaction in hand to the Store and Forward queue.
    Store,
    /// Fail the transaction in hand (counted).
    Fail(FailReason),
    /// Try to connect to the host; on failure retry with backoff (loadAtInit).
    Connect,
    /// Close the connections to the host.
    Disconnect,
    /// Forward the queue in order, reconnecting with backoff until the host answers.
    Forward,
}

pub type Transition = (TransportState, Vec<Action>);

/// Apply one event. Every (state, event) pair has an answer; pairs no rule mentions leave the
/// state as it is.
pub fn step(state: TransportState, event: Event, config: Config) -> Transition {
    use Action::*;
    let sf = config.store_and_forward;
    // What becomes of a transaction the transport cannot deliver now.
    let keep_or_fail = |reason| if sf { Store } else { Fail(reason) };
    let connect_if_loading = if config.load_at_init {
        vec![Connect]
    } else {
        vec![]
    };

    match (state, event) {
        // T8: Suspended and S&F Suspended are restored as they were (a queue emptied by
        // time to live while the worker was down leaves Suspended). A started transport is
        // initialized and connected again; one with a queue forwards it.
        (_, Event::Start { restored, queued }) => match restored {
            Some(Suspended | SfSuspended) if queued => (SfSuspended, vec![]),
            Some(Suspended | SfSuspended) => (Suspended, vec![]),
            _ if queued => (StoreAndForward, vec![Forward]),
            Some(Up | StoreAndForward) => (Down, vec![Connect]),
            // T1: a new transport is Down until its first transaction, or connects at
            // start-up with loadAtInit.
            Some(Down) | None => (Down, connect_if_loading),
        },

        // T5: suspending disconnects; a transport in S&F stops trying to connect. (One
        // whose queue all expired has nothing stored: it is plainly Suspended.)
        (Up, Event::Suspend { .. }) => (Suspended, vec![Disconnect]),
        (Down, Event::Suspend { .. }) => (Suspended, vec![]),
        (StoreAndForward, Event::Suspend { queued: true }) => (SfSuspended, vec![Disconnect]),
        (StoreAndForward, Event::Suspend { queued: false }) => (Suspended, vec![Disconnect]),
        (Suspended | SfSuspended, Event::Suspend { .. }) => (state, vec![]),

        // T7: resume returns to Down (Up once connected, with loadAtInit); a queue is
        // forwarded, and the host being unreachable leaves Store and Forward.
        (Suspended, Event::Resume) => (Down, connect_if_loading),
        (SfSuspended, Event::Resume) => (StoreAndForward, vec![Forward]),
        (Up | Down | StoreAndForward, Event::Resume) => (state, vec![]),

        // T2 and T3: deliver while Up or Down.
        (Up | Down, Event::Arrived) => (state, vec![Deliver]),
        // T4: behind the queue while in Store and Forward (order is kept).
        (StoreAndForward, Event::Arrived) => (
            state,
            vec![keep_or_fail(FailReason::UnreachableWithoutStore)],
        ),
        // T6: a suspended transport never delivers; it stores or fails.
        (Suspended, Event::Arrived) if sf => (SfSuspended, vec![Store]),
        (Suspended | SfSuspended, Event::Arrived) => {
            (state, vec![keep_or_fail(FailReason::SuspendedWithoutStore)])
        }

        // T2: the first delivery connects the transport.
        (Down, Event::Delivered | Event::Connected) => (Up, vec![]),
        (_, Event::Delivered | Event::Connected) => (state, vec![]),

        // T2 and T3: the host is unreachable.
        (Up | Down, Event::Unreachable) if sf => (StoreAndForward, vec![Store, Forward]),
        (Up | Down, Event::Unreachable) => (Down, vec![Fail(FailReason::UnreachableWithoutStore)]),
        // A delivery that was under way when the state changed: keep it behind the queue.
        (Suspended, Event::Unreachable) if sf => (SfSuspended, vec![Store]),
        (Suspended | SfSuspended, Event::Unreachable) => {
            (state, vec![keep_or_fail(FailReason::SuspendedWithoutStore)])
        }
        (StoreAndForward, Event::Unreachable) => (
            state,
            vec![keep_or_fail(FailReason::UnreachableWithoutStore)],
        ),

        // T1: loadAtInit keeps retrying with backoff while the host is unreachable.
        (Down, Event::ConnectFailed) if config.load_at_init => (Down, vec![Connect]),
        (_, Event::ConnectFailed) => (state, vec![]),

        // T4: once the queue is forwarded the transport is Up.
        (StoreAndForward, Event::Drained) => (Up, vec![]),
        (SfSuspended, Event::Drained | Event::QueueEmptied) => (Suspended, vec![]),
        (_, Event::Drained | Event::QueueEmptied) => (state, vec![]),
    }
}

/// Whether the state is one of the two suspended states.
pub fn is_suspended(state: TransportState) -> bool {
    matches!(state, Suspended | SfSuspended)
}

#[cfg(test)]
mod tests {
    use super::{Action::*, Event::*, FailReason::*, *};

    const SF: Config = Config {
        store_and_forward: true,
        load_at_init: false,
    };
    const NO_SF: Config = Config {
        store_and_forward: false,
        load_at_init: false,
    };
    const SF_LOAD: Config = Config {
        store_and_forward: true,
        load_at_init: true,
    };

    const SUSPEND: Event = Suspend { queued: false };
    const SUSPEND_QUEUED: Event = Suspend { queued: true };

    fn start(restored: Option<TransportState>, queued: bool) -> Event {
        Start { restored, queued }
    }

    /// (rule and case, from, event, config, to, actions)
    type Row = (
        &'static str,
        TransportState,
        Event,
        Config,
        TransportState,
        &'static [Action],
    );

    /// One row per case of each rule; the first column names the rule (docs/transport.md).
    #[test]
    fn every_transport_rule() {
        let rows: &[Row] = &[
            // T1: Down until the first transaction ...
            ("T1 new", Down, start(None, false), SF, Down, &[]),
            // ... or, with loadAtInit, connecting at start-up and retrying while Down.
            (
                "T1 loadAtInit",
                Down,
                start(None, false),
                SF_LOAD,
                Down,
                &[Connect],
            ),
            ("T1 connected", Down, Connected, SF_LOAD, Up, &[]),
            ("T1 retry", Down, ConnectFailed, SF_LOAD, Down, &[Connect]),
            (
                "T1 no retry without loadAtInit",
                Down,
                ConnectFailed,
                SF,
                Down,
                &[],
            ),
            // T2: the first transaction connects; delivered means Up.
            ("T2 deliver", Down, Arrived, SF, Down, &[Deliver]),
            ("T2 delivered", Down, Delivered, SF, Up, &[]),
            (
                "T2 unreachable, S&F",
                Down,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store, Forward],
            ),
            // T2: unreachable without S&F fails the transaction and stays Down.
            (
                "T2 unreachable, no S&F",
                Down,
                Unreachable,
                NO_SF,
                Down,
                &[Fail(UnreachableWithoutStore)],
            ),
            ("T3 up delivers", Up, Arrived, SF, Up, &[Deliver]),
            (
                "T3 up unreachable, S&F",
                Up,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store, Forward],
            ),
            (
                "T3 up unreachable, no S&F",
                Up,
                Unreachable,
                NO_SF,
                Down,
                &[Fail(UnreachableWithoutStore)],
            ),
            // T4: behind the queue while in Store and Forward; Up once drained.
            (
                "T4 behind the queue",
                StoreAndForward,
                Arrived,
                SF,
                StoreAndForward,
                &[Store],
            ),
            ("T4 drained", StoreAndForward, Drained, SF, Up, &[]),
            (
                "T4 in-flight failure",
                StoreAndForward,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store],
            ),
            // T5: suspending Up disconnects; Down becomes Suspended too.
            ("T5 suspend up", Up, SUSPEND, SF, Suspended, &[Disconnect]),
            ("T5 suspend down", Down, SUSPEND, SF, Suspended, &[]),
            // T5: suspending Store and Forward gives S&F Suspended and stops reconnecting.
            (
                "T5 suspend S&F",
                StoreAndForward,
                SUSPEND_QUEUED,
                SF,
                SfSuspended,
                &[Disconnect],
            ),
            (
                "T5 suspend S&F, queue all expired",
                StoreAndForward,
                SUSPEND,
                SF,
                Suspended,
                &[Disconnect],
            ),
            ("T5 suspend twice", Suspended, SUSPEND, SF, Suspended, &[]),
            // T6: suspended with S&F queues the transaction (Suspended -> S&F Suspended).
            (
                "T6 suspended stores",
                Suspended,
                Arrived,
                SF,
                SfSuspended,
                &[Store],
            ),
            (
                "T6 S&F suspended stores",
                SfSuspended,
                Arrived,
                SF,
                SfSuspended,
                &[Store],
            ),
            // T6: suspended without S&F fails it.
            (
                "T6 suspended fails",
                Suspended,
                Arrived,
                NO_SF,
                Suspended,
                &[Fail(SuspendedWithoutStore)],
            ),
            // T5/T6: a host that comes back changes nothing until resumed.
            (
                "T6 host back while suspended",
                SfSuspended,
                Connected,
                SF,
                SfSuspended,
                &[],
            ),
            (
                "T6 late delivery stored",
                Suspended,
                Unreachable,
                SF,
                SfSuspended,
                &[Store],
            ),
            // T7: resume gives Down, connecting at once with loadAtInit; a queue is forwarded.
            ("T7 resume", Suspended, Resume, SF, Down, &[]),
            (
                "T7 resume loadAtInit",
                Suspended,
                Resume,
                SF_LOAD,
                Down,
                &[Connect],
            ),
            (
                "T7 resume S&F suspended",
                SfSuspended,
                Resume,
                SF,
                StoreAndForward,
                &[Forward],
            ),
            ("T7 resume when running", Up, Resume, SF, Up, &[]),
            // T8: the suspended states come back as they were ...
            (
                "T8 reboot suspended",
                Down,
                start(Some(Suspended), false),
                SF,
                Suspended,
                &[],
            ),
            (
                "T8 reboot S&F suspended",
                Down,
                start(Some(SfSuspended), true),
                SF,
                SfSuspended,
                &[],
            ),
            (
                "T8 reboot S&F suspended, all expired",
                Down,
                start(Some(SfSuspended), false),
                SF,
                Suspended,
                &[],
            ),
            // T8: ... and a started transport is set up and connected again.
            (
                "T8 reboot up",
                Down,
                start(Some(Up), false),
                SF,
                Down,
                &[Connect],
            ),
            (
                "T8 reboot S&F",
                Down,
                start(Some(StoreAndForward), true),
                SF,
                StoreAndForward,
                &[Forward],
            ),
            (
                "T8 reboot down",
                Down,
                start(Some(Down), false),
                SF,
                Down,
                &[],
            ),
            // T9: a queue emptied by time to live leaves a suspended transport Suspended.
            (
                "T9 expired while suspended",
                SfSuspended,
                QueueEmptied,
                SF,
                Suspended,
                &[],
            ),
            (
                "T9 expired in S&F keeps reconnecting",
                StoreAndForward,
                QueueEmptied,
                SF,
                StoreAndForward,
                &[],
            ),
        ];
        for (name, from, event, config, to, actions) in rows {
            assert_eq!(
                step(*from, *event, *config),
                (*to, actions.to_vec()),
                "rule {name}: {from} + {event:?}"
            );
        }
    }

    #[test]
    fn a_suspended_transport_never_delivers_or_forwards() {
        for state in [Suspended, SfSuspended] {
            for event in [
                Arrived,
                Unreachable,
                Delivered,
                Connected,
                ConnectFailed,
                Drained,
                QueueEmptied,
                SUSPEND,
                SUSPEND_QUEUED,
            ] {
                for config in [SF, NO_SF, SF_LOAD] {
                    let (to, actions) = step(state, event, config);
                    assert!(is_suspended(to), "{state} + {event:?} left suspension");
                    assert!(
                        !actions
                            .iter()
                            .any(|a| matches!(a, Deliver | Forward | Connect)),
                        "{state} + {event:?} -> {actions:?}"
                    );
                }
            }
        }
    }

    /// A model of the rest of the transport: a host that is up or down, a FIFO queue with Max
    /// Storage, and where every transaction ended. Random operations drive `step` through it.
    mod model {
        use std::collections::VecDeque;

        use proptest::prelude::*;

        use super::*;
        use crate::api::transport::WhenFull;

        #[derive(Clone, Debug)]
        enum Op {
            Arrive,
            HostUp,
            HostDown,
            Suspend,
            Resume,
            /// Time to live expires the oldest queued transaction.
            ExpireOldest,
            /// The forwarder delivers the head of the queue (if it may).
            ForwardOne,
            /// A connect attempt (loadAtInit) completes.
            ConnectAttempt,
            /// kill -9 and start again.
            Restart,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Arrive),
                1 => Just(Op::HostUp),
                1 => Just(Op::HostDown),
                1 => Just(Op::Suspend),
                1 => Just(Op::Resume),
                1 => Just(Op::ExpireOldest),
                3 => Just(Op::ForwardOne),
                1 => Just(Op::ConnectAttempt),
                1 => Just(Op::Restart),
            ]
        }

        struct Sim {
            state: TransportState,
            config: Config,
            max_messages: usize,
            when_full: WhenFull,
            host_up: bool,
            next_id: u64,
            queue: VecDeque<u64>,
            delivered: Vec<u64>,
            failed: u64,
            expired: u64,
            dropped: u64,
        }

        impl Sim {
            fn apply(&mut self, event: Event) -> Vec<Action> {
                let (to, actions) = step(self.state, event, self.config);
                self.state = to;
                actions
            }

            /// What happens to the transaction in hand after `actions`.
            fn settle(&mut self, id: u64, actions: &[Action]) {
                match actions.first() {
                    Some(Action::Deliver) if self.host_up => {
                        self.delivered.push(id);
                        self.apply(Event::Delivered);
                    }
                    Some(Action::Deliver) => {
                        let next = self.apply(Event::Unreachable);
                        self.settle(id, &next);
                    }
                    Some(Action::Store) => {
                        if self.queue.len() >= self.max_messages {
                            if self.when_full == WhenFull::RejectNew {
                                self.failed += 1;
                                return;
                            }
                            self.queue.pop_front();
                            self.dropped += 1;
                        }
                        self.queue.push_back(id);
                    }
                    Some(Action::Fail(_)) => self.failed += 1,
                    other => panic!("a transaction in hand got {other:?}"),
                }
            }

            fn run(&mut self, op: &Op) {
                match op {
                    Op::Arrive => {
                        let id = self.next_id;
                        self.next_id += 1;
                        let actions = self.apply(Event::Arrived);
                        self.settle(id, &actions);
                    }
                    Op::HostUp => self.host_up = true,
                    Op::HostDown => self.host_up = false,
                    Op::Suspend => {
                        let queued = !self.queue.is_empty();
                        self.apply(Event::Suspend { queued });
                    }
                    Op::Resume => drop(self.apply(Event::Resume)),
                    Op::ExpireOldest => {
                        if self.queue.pop_front().is_some() {
                            self.expired += 1;
                            if self.queue.is_empty() {
                                self.apply(Event::QueueEmptied);
                            }
                        }
                    }
                    Op::ForwardOne => {
                        if self.state == StoreAndForward && self.host_up {
                            match self.queue.pop_front() {
                                Some(id) => self.delivered.push(id),
                                None => drop(self.apply(Event::Drained)),
                            }
                        }
                    }
                    Op::ConnectAttempt => {
                        let event = if self.host_up {
                            Event::Connected
                        } else {
                            Event::ConnectFailed
                        };
                        self.apply(event);
                    }
                    Op::Restart => {
                        let restored = Some(self.state);
                        let queued = !self.queue.is_empty();
                        self.state = Down;
                        self.apply(Event::Start { restored, queued });
                    }
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn invariants_hold_for_any_sequence(
                ops in proptest::collection::vec(op(), 1..80),
                store_and_forward: bool,
                load_at_init: bool,
                max_messages in 1usize..6,
                reject_new: bool,
            ) {
                let mut sim = Sim {
                    state: Down,
                    config: Config { store_and_forward, load_at_init },
                    max_messages,
                    when_full: if reject_new { WhenFull::RejectNew } else { WhenFull::DropOldest },
                    host_up: true,
                    next_id: 0,
                    queue: VecDeque::new(),
                    delivered: vec![],
                    failed: 0,
                    expired: 0,
                    dropped: 0,
                };
                sim.apply(Event::Start { restored: None, queued: false });
                for op in &ops {
                    let before = sim.state;
                    let delivered_before = sim.delivered.len();
                    sim.run(op);
                    // A suspended transport never delivers.
                    if is_suspended(before) && is_suspended(sim.state) {
                        prop_assert_eq!(sim.delivered.len(), delivered_before, "delivered while suspended: {:?}", op);
                    }
                    // Suspended and S&F Suspended survive a restart.
                    if matches!(op, Op::Restart) {
                        prop_assert_eq!(is_suspended(before), is_suspended(sim.state));
                    }
                    // Queue order is kept: the host sees transactions in arrival order.
                    prop_assert!(sim.delivered.windows(2).all(|w| w[0] < w[1]), "out of order: {:?}", sim.delivered);
                    // Every transaction ends in exactly one place.
                    let ended = sim.delivered.len() as u64 + sim.failed + sim.expired + sim.dropped + sim.queue.len() as u64;
                    prop_assert_eq!(ended, sim.next_id);
                    // The states mean what docs/transport.md says about the queue.
                    match sim.state {
                        Up | Down | Suspended => prop_assert!(sim.queue.is_empty(), "{} with a queue", sim.state),
                        SfSuspended => prop_assert!(!sim.queue.is_empty(), "S&F Suspended with an empty queue"),
                        StoreAndForward => {}
                    }
                }
            }
        }
    }
}
