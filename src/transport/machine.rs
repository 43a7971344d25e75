//! The transport state machine of shared/seeds/001, as a pure function:
//! `(state, event) -> (state, actions)`. All I/O (delivering, storing, connecting) is done by
//! the runtime, which feeds the outcomes back in as events.
//!
//! The rule numbers are those of DESIGN.md's "Transitions" list.

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
    /// The user suspended the transport (`spec.suspended: true`).
    Suspend,
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

/// Why a transaction fails instead of being delivered or stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Suspended, and Store and Forward is disabled (seed: "suspending it will cause it to
    /// fail all transactions coming in").
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

/// Apply one event. Every (state, event) pair has an answer; pairs the seed does not mention
/// leave the state as it is.
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
        // Rule 8: Suspended and S&F Suspended are restored as they were (a queue emptied by
        // time to live while the worker was down leaves Suspended). A started transport is
        // initialized and connected again; one with a queue forwards it.
        (_, Event::Start { restored, queued }) => match restored {
            Some(Suspended | SfSuspended) if queued => (SfSuspended, vec![]),
            Some(Suspended | SfSuspended) => (Suspended, vec![]),
            _ if queued => (StoreAndForward, vec![Forward]),
            Some(Up | StoreAndForward) => (Down, vec![Connect]),
            // Rule 1: a new transport is Down until its first transaction, or connects at
            // start-up with loadAtInit.
            Some(Down) | None => (Down, connect_if_loading),
        },

        // Rule 5: suspending disconnects; a transport in S&F stops trying to connect.
        (Up, Event::Suspend) => (Suspended, vec![Disconnect]),
        (Down, Event::Suspend) => (Suspended, vec![]),
        (StoreAndForward, Event::Suspend) => (SfSuspended, vec![Disconnect]),
        (Suspended | SfSuspended, Event::Suspend) => (state, vec![]),

        // Rule 7: resume returns to Down (Up once connected, with loadAtInit); a queue is
        // forwarded, and the host being unreachable leaves Store and Forward.
        (Suspended, Event::Resume) => (Down, connect_if_loading),
        (SfSuspended, Event::Resume) => (StoreAndForward, vec![Forward]),
        (Up | Down | StoreAndForward, Event::Resume) => (state, vec![]),

        // Rules 2 and 3: deliver while Up or Down.
        (Up | Down, Event::Arrived) => (state, vec![Deliver]),
        // Rule 4: behind the queue while in Store and Forward (order is kept).
        (StoreAndForward, Event::Arrived) => (
            state,
            vec![keep_or_fail(FailReason::UnreachableWithoutStore)],
        ),
        // Rule 6: a suspended transport never delivers; it stores or fails.
        (Suspended, Event::Arrived) if sf => (SfSuspended, vec![Store]),
        (Suspended | SfSuspended, Event::Arrived) => {
            (state, vec![keep_or_fail(FailReason::SuspendedWithoutStore)])
        }

        // Rule 2: the first delivery connects the transport.
        (Down, Event::Delivered | Event::Connected) => (Up, vec![]),
        (_, Event::Delivered | Event::Connected) => (state, vec![]),

        // Rules 2 and 3: the host is unreachable.
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

        // Rule 1: loadAtInit keeps retrying with backoff while the host is unreachable.
        (Down, Event::ConnectFailed) if config.load_at_init => (Down, vec![Connect]),
        (_, Event::ConnectFailed) => (state, vec![]),

        // Rule 4: once the queue is forwarded the transport is Up.
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

    fn start(restored: Option<TransportState>, queued: bool) -> Event {
        Start { restored, queued }
    }

    /// (rule, from, event, config, to, actions)
    type Row = (
        &'static str,
        TransportState,
        Event,
        Config,
        TransportState,
        &'static [Action],
    );

    /// One row per sentence of the seed (and per DESIGN rule); the comment quotes it.
    #[test]
    fn every_rule_of_the_seed() {
        let rows: &[Row] = &[
            // "By default, a transport is down until it processes a transport map."
            ("1 new", Down, start(None, false), SF, Down, &[]),
            // "If you checked Load transport at initialization ... a connection to the host
            // is attempted as soon as the node boots up"
            (
                "1 loadAtInit",
                Down,
                start(None, false),
                SF_LOAD,
                Down,
                &[Connect],
            ),
            ("1 connected", Down, Connected, SF_LOAD, Up, &[]),
            ("1 retry", Down, ConnectFailed, SF_LOAD, Down, &[Connect]),
            (
                "1 no retry without loadAtInit",
                Down,
                ConnectFailed,
                SF,
                Down,
                &[],
            ),
            // "the first transaction that comes through the transport will switch the state
            // from Down to Up"
            ("2 deliver", Down, Arrived, SF, Down, &[Deliver]),
            ("2 delivered", Down, Delivered, SF, Up, &[]),
            (
                "2 unreachable, S&F",
                Down,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store, Forward],
            ),
            // "If the host is not available and store and forward is disabled, the
            // transaction will be counted as a failure, and the state ... will remain at Down."
            (
                "2 unreachable, no S&F",
                Down,
                Unreachable,
                NO_SF,
                Down,
                &[Fail(UnreachableWithoutStore)],
            ),
            ("3 up delivers", Up, Arrived, SF, Up, &[Deliver]),
            (
                "3 up unreachable, S&F",
                Up,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store, Forward],
            ),
            (
                "3 up unreachable, no S&F",
                Up,
                Unreachable,
                NO_SF,
                Down,
                &[Fail(UnreachableWithoutStore)],
            ),
            // S&F: "transactions are being saved in a store and forward queue"
            (
                "4 behind the queue",
                StoreAndForward,
                Arrived,
                SF,
                StoreAndForward,
                &[Store],
            ),
            ("4 drained", StoreAndForward, Drained, SF, Up, &[]),
            (
                "4 in-flight failure",
                StoreAndForward,
                Unreachable,
                SF,
                StoreAndForward,
                &[Store],
            ),
            // "When a transport with an Up state is suspended, the transport will disconnect
            // from the host. Its status ... is changed to Suspended."
            ("5 suspend up", Up, Suspend, SF, Suspended, &[Disconnect]),
            ("5 suspend down", Down, Suspend, SF, Suspended, &[]),
            // "When a transport with a Store and Forward state is suspended its status changes
            // to S&F Suspended. The transport will no longer attempt to connect to the host."
            (
                "5 suspend S&F",
                StoreAndForward,
                Suspend,
                SF,
                SfSuspended,
                &[Disconnect],
            ),
            ("5 suspend twice", Suspended, Suspend, SF, Suspended, &[]),
            // "if the transport has store and forward enabled, then the transaction will be
            // saved into a store and forward queue and the transport state updated from
            // Suspended to S&F Suspended."
            (
                "6 suspended stores",
                Suspended,
                Arrived,
                SF,
                SfSuspended,
                &[Store],
            ),
            (
                "6 S&F suspended stores",
                SfSuspended,
                Arrived,
                SF,
                SfSuspended,
                &[Store],
            ),
            // "the first transaction that comes through the transport will be counted as a
            // failure — if the transport does not have store and forward capability"
            (
                "6 suspended fails",
                Suspended,
                Arrived,
                NO_SF,
                Suspended,
                &[Fail(SuspendedWithoutStore)],
            ),
            // "If the host becomes available, the transport will remain in a S&F Suspended
            // state until it is resumed."
            (
                "6 host back while suspended",
                SfSuspended,
                Connected,
                SF,
                SfSuspended,
                &[],
            ),
            (
                "6 late delivery stored",
                Suspended,
                Unreachable,
                SF,
                SfSuspended,
                &[Store],
            ),
            // "The transport is returned to a Down state, unless you checked the Load
            // transport at Initialization option ... and the host is available"
            ("7 resume", Suspended, Resume, SF, Down, &[]),
            (
                "7 resume loadAtInit",
                Suspended,
                Resume,
                SF_LOAD,
                Down,
                &[Connect],
            ),
            (
                "7 resume S&F suspended",
                SfSuspended,
                Resume,
                SF,
                StoreAndForward,
                &[Forward],
            ),
            ("7 resume when running", Up, Resume, SF, Up, &[]),
            // "If the node is rebooted, the transport state will be restored to Suspended or
            // S&F Suspended depending on the state it was"
            (
                "8 reboot suspended",
                Down,
                start(Some(Suspended), false),
                SF,
                Suspended,
                &[],
            ),
            (
                "8 reboot S&F suspended",
                Down,
                start(Some(SfSuspended), true),
                SF,
                SfSuspended,
                &[],
            ),
            (
                "8 reboot S&F suspended, all expired",
                Down,
                start(Some(SfSuspended), false),
                SF,
                Suspended,
                &[],
            ),
            // "a started transport will be automatically initialized and connected to the host
            // when the device comes back up."
            (
                "8 reboot up",
                Down,
                start(Some(Up), false),
                SF,
                Down,
                &[Connect],
            ),
            (
                "8 reboot S&F",
                Down,
                start(Some(StoreAndForward), true),
                SF,
                StoreAndForward,
                &[Forward],
            ),
            (
                "8 reboot down",
                Down,
                start(Some(Down), false),
                SF,
                Down,
                &[],
            ),
            // "The transactions will stay in the store and forward queue until their time to
            // live expires" — an emptied queue leaves a suspended transport Suspended.
            (
                "9 expired while suspended",
                SfSuspended,
                QueueEmptied,
                SF,
                Suspended,
                &[],
            ),
            (
                "9 expired in S&F keeps reconnecting",
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
                Suspend,
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
}
