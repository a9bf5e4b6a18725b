#![allow(dead_code)] // each test crate uses part of this helper
//! A customer push endpoint for tests: a real HTTP server on 127.0.0.1 (ephemeral port) that
//! records every request and answers `{"code":0}`, or fails on purpose or answers slowly while
//! told to.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use warp::Filter;

/// One request as the customer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub content_type: String,
    pub body: Vec<u8>,
    /// Whether this request was answered with success.
    pub accepted: bool,
}

impl Received {
    /// The form fields of a topic push.
    pub fn form(&self) -> Vec<(String, String)> {
        serde_urlencoded::from_bytes(&self.body).expect("form body")
    }

    pub fn field(&self, name: &str) -> Option<String> {
        self.form()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    /// The records of `data_list`.
    pub fn data_list(&self) -> Vec<serde_json::Value> {
        let list = self.field("data_list").expect("data_list field");
        serde_json::from_str(&list).expect("data_list is a JSON array")
    }
}

pub struct Receiver {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    failures_left: Arc<AtomicUsize>,
    accepted_records: Arc<AtomicUsize>,
    /// How long each request waits before it is answered, in milliseconds.
    delay_ms: Arc<AtomicU64>,
    /// A request whose records contain this text is answered 413 Payload Too Large.
    refused: Arc<Mutex<Option<String>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Receiver {
    /// Starts the server; the first `failures` requests fail, alternating HTTP 500 and
    /// `200 {"code":1}`.
    pub async fn start(failures: usize) -> Receiver {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let failures_left = Arc::new(AtomicUsize::new(failures));
        let accepted_records = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(Mutex::new(None::<String>));
        let (reqs, left, count, delay, refusing) = (
            requests.clone(),
            failures_left.clone(),
            accepted_records.clone(),
            delay_ms.clone(),
            refused.clone(),
        );
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::optional::<String>("content-type"))
            .and(warp::body::bytes())
            .and_then(move |path, ct, body| {
                let delay = Duration::from_millis(delay.load(Ordering::SeqCst));
                async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>((path, ct, body))
                }
            })
            .untuple_one()
            .map(
                move |path: warp::path::FullPath, ct: Option<String>, body: bytes::Bytes| {
                    let refused_here = refusing.lock().unwrap().as_ref().is_some_and(|marker| {
                        let form: Vec<(String, String)> =
                            serde_urlencoded::from_bytes(&body).unwrap_or_default();
                        form.iter().any(|(_, v)| v.contains(marker.as_str()))
                            || String::from_utf8_lossy(&body).contains(marker.as_str())
                    });
                    let remaining = if refused_here {
                        0
                    } else {
                        left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .unwrap_or(0)
                    };
                    let (status, reply, accepted) = if refused_here {
                        (
                            warp::http::StatusCode::PAYLOAD_TOO_LARGE,
                            r#"{"code":1,"message":"too large"}"#,
                            false,
                        )
                    } else if remaining == 0 {
                        (
                            warp::http::StatusCode::OK,
                            r#"{"code":0,"message":"ok"}"#,
                            true,
                        )
                    } else if remaining % 2 == 1 {
                        (
                            warp::http::StatusCode::INTERNAL_SERVER_ERROR,
                            r#"{"code":0}"#,
                            false,
                        )
                    } else {
                        (
                            warp::http::StatusCode::OK,
                            r#"{"code":1,"message":"busy"}"#,
                            false,
                        )
                    };
                    let received = Received {
                        path: path.as_str().to_owned(),
                        content_type: ct.unwrap_or_default(),
                        body: body.to_vec(),
                        accepted,
                    };
                    if accepted {
                        let n = match received.field("data_list") {
                            Some(_) => received.data_list().len(),
                            None => 1,
                        };
                        count.fetch_add(n, Ordering::SeqCst);
                    }
                    reqs.lock().unwrap().push(received);
                    warp::reply::with_status(reply.to_owned(), status)
                },
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(
            warp::serve(route)
                .incoming(listener)
                .graceful(async move {
                    let _ = rx.await;
                })
                .run(),
        );
        Receiver {
            addr,
            requests,
            failures_left,
            accepted_records,
            delay_ms,
            refused,
            shutdown: Some(tx),
        }
    }

    /// From now on answers 413 to every request carrying a record that contains `marker`
    /// (`None`: accepts them again).
    pub fn refuse_records_containing(&self, marker: Option<&str>) {
        *self.refused.lock().unwrap() = marker.map(str::to_owned);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_failures(&self, n: usize) {
        self.failures_left.store(n, Ordering::SeqCst);
    }

    /// Makes every request from now on wait `delay` before it is answered: a slow customer.
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms.store(
            delay.as_millis().try_into().unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Records in accepted requests so far (a callback request counts as one).
    pub fn accepted_record_count(&self) -> usize {
        self.accepted_records.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.accepted).collect()
    }

    /// Records of accepted requests to `path`, in arrival order.
    pub fn accepted_records(&self, path: &str) -> Vec<serde_json::Value> {
        self.accepted()
            .iter()
            .filter(|r| r.path == path)
            .flat_map(|r| r.data_list())
            .collect()
    }

    /// Waits until `cond` holds on the received requests, or panics after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, what: &str, cond: impl Fn(&Receiver) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !cond(self) {
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}; got {} requests",
                    self.requests().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A loopback URL where nothing listens (connections are refused).
pub async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}
