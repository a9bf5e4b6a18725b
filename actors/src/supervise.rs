//! Supervision of the node's long-running tasks and threads (the log writer, the Kafka
//! dispatcher, drain and broker watch, the spool thread, the cluster renewal). Each is the one
//! consumer of something every session depends on, so a panic in one would leave every
//! publish failing while the node looked healthy. A supervised body that panics is counted
//! (`iothub_task_panics_total{task}`), its task is reported down in [`Health`] (so `/ready`
//! answers 503) until it runs again, and it is restarted after a backoff that grows while it
//! keeps panicking. What the body was doing when it panicked is dropped with it: a caller
//! waiting for that work gets an error, so no device is acknowledged for it.
//!
//! The bodies keep their inputs (a queue's receiving end) outside the part that may panic, so
//! work queued behind the panic is done by the restarted body, in order.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use futures::FutureExt;

use crate::health::Health;

/// First wait before a restart; doubles while the body keeps panicking, up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A body that ran this long before it panicked starts again from [`MIN_BACKOFF`].
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// The restarts of one supervised body.
pub struct Restarts {
    task: &'static str,
    health: Health,
    backoff: Duration,
    started: Instant,
}

impl Restarts {
    pub fn new(task: &'static str, health: Health) -> Restarts {
        Restarts {
            task,
            health,
            backoff: MIN_BACKOFF,
            started: Instant::now(),
        }
    }

    /// Counts a panic, reports the task down, and says how long to wait before the restart.
    fn panicked(&mut self, panic: &(dyn Any + Send)) -> Duration {
        let message = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        metrics::counter!("iothub_task_panics_total", "task" => self.task).increment(1);
        self.health.set_down(self.task, true);
        if self.started.elapsed() >= STABLE_AFTER {
            self.backoff = MIN_BACKOFF;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        tracing::error!(task = self.task, panic = message, restart_in = ?wait, "supervised task panicked; restarting it");
        wait
    }

    fn restarting(&mut self) {
        self.started = Instant::now();
        self.health.set_down(self.task, false);
    }

    /// Runs `body` on this thread until it returns, restarting it after every panic.
    pub fn run_blocking(mut self, mut body: impl FnMut()) {
        loop {
            match std::panic::catch_unwind(AssertUnwindSafe(&mut body)) {
                Ok(()) => return,
                Err(panic) => {
                    std::thread::sleep(self.panicked(&*panic));
                    self.restarting();
                }
            }
        }
    }

    /// Awaits `body` until it finishes; after a panic, waits the backoff and returns false
    /// for the caller to start it again.
    pub async fn finished(&mut self, body: impl Future<Output = ()>) -> bool {
        match AssertUnwindSafe(body).catch_unwind().await {
            Ok(()) => true,
            Err(panic) => {
                tokio::time::sleep(self.panicked(&*panic)).await;
                self.restarting();
                false
            }
        }
    }
}

/// Runs the future `start` makes until one finishes, making a new one after every panic.
pub async fn run<F, Fut>(task: &'static str, health: Health, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut restarts = Restarts::new(task, health);
    while !restarts.finished(start()).await {}
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_is_started_again() {
        let starts = Arc::new(AtomicU32::new(0));
        let counted = starts.clone();
        run("test_task", Health::default(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("first run panics");
                }
            }
        })
        .await;
        assert_eq!(starts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_task_is_down_between_its_panic_and_its_restart() {
        let health = Health::default();
        let mut restarts = Restarts::new("test_task", health.clone());
        let watched = health.clone();
        let watch = tokio::spawn(async move {
            loop {
                if watched.is_down("test_task") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let finished = restarts.finished(async { panic!("panics") }).await;
        assert!(!finished);
        tokio::time::timeout(Duration::from_secs(1), watch)
            .await
            .expect("the task was never reported down")
            .unwrap();
    }

    #[tokio::test]
    async fn a_restarted_task_is_up_again() {
        let health = Health::default();
        let mut restarts = Restarts::new("test_task", health.clone());
        restarts.finished(async { panic!("panics") }).await;
        assert!(!health.is_down("test_task"));
    }

    #[test]
    fn a_panic_is_counted_by_task() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let mut runs = 0;
            Restarts::new("counted_task", Health::default()).run_blocking(|| {
                runs += 1;
                if runs == 1 {
                    panic!("first run panics");
                }
            });
        });
        assert!(
            handle
                .render()
                .contains("iothub_task_panics_total{task=\"counted_task\"} 1"),
            "{}",
            handle.render()
        );
    }

    #[test]
    fn a_thread_body_that_panics_runs_again_on_the_same_thread() {
        let mut runs = 0;
        Restarts::new("test_thread", Health::default()).run_blocking(|| {
            runs += 1;
            if runs == 1 {
                panic!("first run panics");
            }
        });
        assert_eq!(runs, 2);
    }
}
