//! One resource's background work, kept apart from the others': a task that panics is caught,
//! counted to its resource ([`Panics`], shown in the resource's report, status and metrics)
//! and started again after a pause, while every other resource of the worker goes on. A pool's
//! worker hosts many resources: one bad input must not stop the rest.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::api::Faults;

/// The first pause before a panicked task runs again; it doubles up to [`RESTART_CAP`].
const RESTART_FIRST: Duration = Duration::from_secs(1);
const RESTART_CAP: Duration = Duration::from_secs(60);
/// The longest panic message kept (a payload may be anything).
const MAX_MESSAGE: usize = 512;

/// The panics caught in one resource's work.
#[derive(Debug, Default)]
pub struct Panics {
    count: AtomicU64,
    last: Mutex<Option<String>>,
}

impl Panics {
    /// Count a panic of `what` (as `forwarding`, `ingest`) with its payload.
    pub fn record(&self, resource: &str, what: &str, payload: &(dyn std::any::Any + Send)) {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into());
        let mut message = format!("{what} panicked: {text}");
        if message.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        tracing::error!(resource, %message, "caught a panic; the other resources go on");
        self.count.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    /// What the report shows: how many, and the last one's message.
    pub fn faults(&self) -> Faults {
        Faults {
            panics: self.count.load(Ordering::Relaxed),
            last_panic: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        }
    }
}

/// Run `work()` as a task; when it panics, count it to `panics` and run a new `work()` after a
/// pause (1 s, doubling to 60 s). Ends when `work` returns; aborting the handle ends it too.
pub fn supervised<W, F>(
    resource: String,
    what: &'static str,
    panics: std::sync::Arc<Panics>,
    work: W,
) -> JoinHandle<()>
where
    W: Fn() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        let mut pause = RESTART_FIRST;
        loop {
            match AssertUnwindSafe(work()).catch_unwind().await {
                Ok(()) => return,
                Err(payload) => {
                    panics.record(&resource, what, payload.as_ref());
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RESTART_CAP);
                }
            }
        }
    })
}

/// A panic asked for by the debug-only failpoints of the tests: `FERRY_FAILPOINTS` lists
/// `<site>=<namespace/name>` pairs, comma-separated; each fires once per process. Release
/// builds never read it.
pub fn failpoint(site: &str, resource: &str) {
    if !cfg!(debug_assertions) {
        return;
    }
    static FIRED: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let Ok(points) = std::env::var("FERRY_FAILPOINTS") else {
        return;
    };
    let wanted = format!("{site}={resource}");
    if !points.split(',').any(|p| p.trim() == wanted) {
        return;
    }
    let mut fired = FIRED.lock().unwrap_or_else(|e| e.into_inner());
    if fired.contains(&wanted) {
        return;
    }
    fired.push(wanted);
    drop(fired);
    panic!("failpoint {site} of {resource}");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::AtomicU32};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_counted_and_runs_again() {
        let panics = Arc::new(Panics::default());
        let runs = Arc::new(AtomicU32::new(0));
        let counted = runs.clone();
        let task = supervised("ns/a".into(), "forwarding", panics.clone(), move || {
            let runs = counted.clone();
            async move {
                if runs.fetch_add(1, Ordering::Relaxed) < 2 {
                    panic!("bad input {}", "x".repeat(1000));
                }
            }
        });
        task.await.unwrap();
        assert_eq!(runs.load(Ordering::Relaxed), 3);
        let faults = panics.faults();
        assert_eq!(faults.panics, 2);
        let message = faults.last_panic.unwrap();
        assert!(
            message.starts_with("forwarding panicked: bad input x"),
            "{message}"
        );
        assert!(message.len() <= MAX_MESSAGE);
    }
}
