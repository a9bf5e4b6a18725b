//! A customer's push endpoint, built in: a real HTTP server that accepts what the hub POSTs
//! to `pushURL` (`/pushgps`, `/pushalarm`, ... with a form body `token` + `data_list`) and to
//! `offlineCmdPushURL` (one JSON object), answers `{"code":0}`, and keeps every record so
//! tests and load runs can check what was delivered, how often, and how late.
//!
//! # Duplicates
//! A record is a duplicate when an earlier record of the same endpoint had the same key:
//! - `/pushgps`: `deviceImei` + `gpsTime` + `lat` + `lng` (a device never reports two fixes
//!   with the same time and place; a redelivery repeats all four);
//! - `/pushalarm`: IMEI + `msg.alarmTime` + `msg.alertType` + `msg.lat` + `msg.lng`;
//! - `/pushhb`: `deviceImei` + `gateTime` (two heartbeats of one device within the same
//!   second of hub time would be reported as a duplicate);
//! - `/pushevent`: `deviceImei` + `type` + `gateTime` (same caveat);
//! - `/pushInstructResponse` and the offline callback: `_imei` + `_serverFlagId` +
//!   `_content` (`data._…` for the callback);
//! - anything else: the record's whole JSON text.
//!
//! Records are stored up to a bound (`ReceiverConfig::max_stored`); past it they are still
//! counted and checked for duplicates, but their bodies are not kept.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

/// Largest request body accepted (a `data_list` batch of a few thousand records).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the receiver answers while it is failing on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureMode {
    /// Answer normally: `{"code":0}`.
    #[default]
    None,
    /// HTTP 500 with an empty JSON object.
    Http500,
    /// HTTP 200 with `{"code":1,"msg":"failing on purpose"}` (Jimi's "not accepted").
    CodeOne,
}

impl FailureMode {
    fn to_u8(self) -> u8 {
        match self {
            FailureMode::None => 0,
            FailureMode::Http500 => 1,
            FailureMode::CodeOne => 2,
        }
    }

    fn from_u8(v: u8) -> FailureMode {
        match v {
            1 => FailureMode::Http500,
            2 => FailureMode::CodeOne,
            _ => FailureMode::None,
        }
    }
}

/// Receiver settings.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    /// Path the offline-command callback is posted to (`offlineCmdPushURL` is a full URL).
    pub offline_callback_path: String,
    /// Records kept in memory (bodies); counting goes on past it.
    pub max_stored: usize,
}

impl ReceiverConfig {
    pub fn new(listen: SocketAddr) -> ReceiverConfig {
        ReceiverConfig {
            listen,
            offline_callback_path: "/offlineCallback".to_owned(),
            max_stored: 1_000_000,
        }
    }
}

/// One delivered record.
#[derive(Debug, Clone, PartialEq)]
pub struct PushRecord {
    /// Request path, e.g. `/pushgps`.
    pub endpoint: String,
    /// The `token` sent with it.
    pub token: Option<String>,
    /// IMEI found in the record (`deviceImei`, `imei`, `_imei`, `data._imei`, `msg.deviceImei`).
    pub imei: Option<String>,
    /// The `data_list` item (or the whole object for single-object pushes).
    pub record: Value,
    pub received_at: Instant,
    /// An earlier record of this endpoint had the same key (see the module docs).
    pub duplicate: bool,
}

/// Records of one IMEI on one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImeiCount {
    /// Duplicates included.
    pub total: u64,
    pub duplicates: u64,
}

#[derive(Debug, Default)]
struct EndpointState {
    records: Vec<PushRecord>,
    total: u64,
    duplicates: u64,
    keys: HashSet<String>,
    per_imei: HashMap<String, ImeiCount>,
}

#[derive(Debug, Default)]
struct State {
    endpoints: HashMap<String, EndpointState>,
    stored: usize,
    not_stored: u64,
    requests: u64,
    rejected: u64,
    bad_requests: u64,
}

struct Shared {
    config: ReceiverConfig,
    state: Mutex<State>,
    failure: AtomicU8,
    /// A request carrying a record whose JSON text contains this is answered 413.
    refused_marker: Mutex<Option<String>>,
    notify: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A read-only view of everything received, handed to [`PushReceiver::wait_for`] predicates.
pub struct ReceiverView<'a> {
    state: &'a State,
}

impl ReceiverView<'_> {
    /// Records received on `endpoint` (`"/pushgps"` or `"pushgps"`), duplicates included.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.endpoint(endpoint).map_or(0, |e| e.total)
    }

    /// Records received on `endpoint`, not counting duplicates.
    pub fn unique(&self, endpoint: &str) -> u64 {
        self.endpoint(endpoint)
            .map_or(0, |e| e.total - e.duplicates)
    }

    pub fn duplicates(&self, endpoint: &str) -> u64 {
        self.endpoint(endpoint).map_or(0, |e| e.duplicates)
    }

    /// Records of one IMEI on `endpoint`, duplicates included.
    pub fn count_for_imei(&self, endpoint: &str, imei: &str) -> u64 {
        self.endpoint(endpoint)
            .and_then(|e| e.per_imei.get(imei))
            .map_or(0, |c| c.total)
    }

    /// Per-IMEI counts of `endpoint`, in no particular order.
    pub fn imei_counts(&self, endpoint: &str) -> impl Iterator<Item = (&str, ImeiCount)> {
        self.endpoint(endpoint)
            .into_iter()
            .flat_map(|e| e.per_imei.iter().map(|(k, v)| (k.as_str(), *v)))
    }

    /// Stored records of `endpoint`, in arrival order.
    pub fn records(&self, endpoint: &str) -> &[PushRecord] {
        self.endpoint(endpoint)
            .map_or(&[], |e| e.records.as_slice())
    }

    /// Requests answered with a failure on purpose.
    pub fn rejected(&self) -> u64 {
        self.state.rejected
    }

    fn endpoint(&self, endpoint: &str) -> Option<&EndpointState> {
        self.state.endpoints.get(&normalize(endpoint))
    }
}

/// The running receiver; stops serving when dropped.
pub struct PushReceiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for PushReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushReceiver")
            .field("addr", &self.addr)
            .finish()
    }
}

impl PushReceiver {
    /// Listens on `addr` (port 0 picks a free port) with default settings.
    pub async fn start(addr: SocketAddr) -> io::Result<PushReceiver> {
        PushReceiver::start_with(ReceiverConfig::new(addr)).await
    }

    pub async fn start_with(config: ReceiverConfig) -> io::Result<PushReceiver> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State::default()),
            failure: AtomicU8::new(0),
            refused_marker: Mutex::new(None),
            notify: Notify::new(),
        });
        let (shutdown, stop) = watch::channel(false);
        tokio::spawn(accept_loop(listener, shared.clone(), stop));
        Ok(PushReceiver {
            shared,
            addr,
            shutdown,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL to configure as the hub's `pushURL`, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// URL to configure as `offlineCmdPushURL`.
    pub fn offline_callback_url(&self) -> String {
        format!("{}{}", self.url(), self.shared.config.offline_callback_path)
    }

    /// Stored records of `endpoint` (`"/pushgps"` or `"pushgps"`), in arrival order.
    pub fn records(&self, endpoint: &str) -> Vec<PushRecord> {
        self.view(|v| v.records(endpoint).to_vec())
    }

    pub fn count(&self, endpoint: &str) -> u64 {
        self.view(|v| v.count(endpoint))
    }

    pub fn unique(&self, endpoint: &str) -> u64 {
        self.view(|v| v.unique(endpoint))
    }

    pub fn duplicates(&self, endpoint: &str) -> u64 {
        self.view(|v| v.duplicates(endpoint))
    }

    pub fn count_for_imei(&self, endpoint: &str, imei: &str) -> u64 {
        self.view(|v| v.count_for_imei(endpoint, imei))
    }

    /// HTTP requests received (accepted, rejected on purpose, and malformed).
    pub fn requests(&self) -> u64 {
        self.shared.lock().requests
    }

    /// Requests answered with a failure because of [`Self::set_failing`].
    pub fn rejected(&self) -> u64 {
        self.shared.lock().rejected
    }

    /// Requests whose body could not be read as a push.
    pub fn bad_requests(&self) -> u64 {
        self.shared.lock().bad_requests
    }

    /// Records counted but not stored because `max_stored` was reached.
    pub fn not_stored(&self) -> u64 {
        self.shared.lock().not_stored
    }

    /// Runs `f` on a consistent view of everything received.
    pub fn view<T>(&self, f: impl FnOnce(&ReceiverView<'_>) -> T) -> T {
        let state = self.shared.lock();
        f(&ReceiverView { state: &state })
    }

    /// `true`: answer every push with HTTP 500 (nothing is recorded); `false`: accept again.
    pub fn set_failing(&self, failing: bool) {
        self.set_failure_mode(if failing {
            FailureMode::Http500
        } else {
            FailureMode::None
        });
    }

    pub fn set_failure_mode(&self, mode: FailureMode) {
        self.shared.failure.store(mode.to_u8(), Ordering::SeqCst);
    }

    /// From now on answers HTTP 413 (nothing recorded, counted as rejected) to every request
    /// carrying a record whose JSON text contains `marker`, as an endpoint does with a record
    /// it will never take; `None` accepts them again.
    pub fn set_refused_marker(&self, marker: Option<&str>) {
        *self
            .shared
            .refused_marker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = marker.map(str::to_owned);
    }

    /// Waits until `predicate` holds (checked after every delivery) or `timeout` passes;
    /// returns whether it held.
    pub async fn wait_for(
        &self,
        mut predicate: impl FnMut(&ReceiverView<'_>) -> bool,
        timeout: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a delivery between the check and the wait wakes us.
            notified.as_mut().enable();
            if self.view(&mut predicate) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.view(&mut predicate);
            }
        }
    }
}

impl Drop for PushReceiver {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors or a connection reset before accept: back off a
                // little instead of spinning.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.changed() => {}
            }
        });
    }
}

fn json_response(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let endpoint = normalize(req.uri().path());
    if req.method() != Method::POST {
        shared.lock().requests += 1;
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            r#"{"code":1,"msg":"POST only"}"#,
        );
    }
    let is_json = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let mut state = shared.lock();
            state.requests += 1;
            state.bad_requests += 1;
            return json_response(StatusCode::BAD_REQUEST, r#"{"code":1,"msg":"bad body"}"#);
        }
    };
    match FailureMode::from_u8(shared.failure.load(Ordering::SeqCst)) {
        FailureMode::None => {}
        FailureMode::Http500 => {
            let mut state = shared.lock();
            state.requests += 1;
            state.rejected += 1;
            return json_response(StatusCode::INTERNAL_SERVER_ERROR, "{}");
        }
        FailureMode::CodeOne => {
            let mut state = shared.lock();
            state.requests += 1;
            state.rejected += 1;
            return json_response(StatusCode::OK, r#"{"code":1,"msg":"failing on purpose"}"#);
        }
    }
    let parsed = parse_push(&body, is_json);
    let refused = shared
        .refused_marker
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .is_some_and(|marker| {
            parsed.as_ref().is_some_and(|(_, items)| {
                items.iter().any(|item| item.to_string().contains(&marker))
            })
        });
    if refused {
        let mut state = shared.lock();
        state.requests += 1;
        state.rejected += 1;
        return json_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            r#"{"code":1,"msg":"refused on purpose"}"#,
        );
    }
    let now = Instant::now();
    {
        let mut state = shared.lock();
        state.requests += 1;
        let Some((token, items)) = parsed else {
            state.bad_requests += 1;
            return json_response(StatusCode::BAD_REQUEST, r#"{"code":1,"msg":"bad body"}"#);
        };
        for item in items {
            record(
                &mut state,
                &shared.config,
                &endpoint,
                token.clone(),
                item,
                now,
            );
        }
    }
    shared.notify.notify_waiters();
    json_response(StatusCode::OK, r#"{"code":0}"#)
}

fn record(
    state: &mut State,
    config: &ReceiverConfig,
    endpoint: &str,
    token: Option<String>,
    item: Value,
    now: Instant,
) {
    let key = dedup_key(endpoint, &item, &config.offline_callback_path);
    let imei = imei_of(&item);
    let store = state.stored < config.max_stored;
    let ep = state.endpoints.entry(endpoint.to_owned()).or_default();
    let duplicate = !ep.keys.insert(key);
    ep.total += 1;
    if duplicate {
        ep.duplicates += 1;
    }
    if let Some(imei) = &imei {
        let count = ep.per_imei.entry(imei.clone()).or_default();
        count.total += 1;
        if duplicate {
            count.duplicates += 1;
        }
    }
    if store {
        ep.records.push(PushRecord {
            endpoint: endpoint.to_owned(),
            token,
            imei,
            record: item,
            received_at: now,
            duplicate,
        });
        state.stored += 1;
    } else {
        state.not_stored += 1;
    }
}

/// Leading slash, no trailing slash: `pushgps`, `/pushgps` and `/pushgps/` are one endpoint.
fn normalize(endpoint: &str) -> String {
    let trimmed = endpoint.trim_matches('/');
    format!("/{trimmed}")
}

/// Token and records of a push body: a form with `token` and `data_list` (a JSON array, or a
/// single object), a form without `data_list` (recorded as one object of its fields), or a
/// JSON body (an array of records, or one object whose `token` is the token).
pub fn parse_push(body: &[u8], is_json: bool) -> Option<(Option<String>, Vec<Value>)> {
    let looks_json = matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    );
    if is_json || looks_json {
        return match serde_json::from_slice::<Value>(body).ok()? {
            Value::Array(items) => Some((None, items)),
            Value::Object(obj) => {
                let token = obj.get("token").and_then(Value::as_str).map(str::to_owned);
                if let Some(list) = obj.get("data_list") {
                    let items = list_items(list)?;
                    return Some((token, items));
                }
                Some((token, vec![Value::Object(obj)]))
            }
            _ => None,
        };
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_bytes(body).ok()?;
    let token = fields
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.clone());
    match fields.iter().find(|(k, _)| k == "data_list") {
        Some((_, list)) => {
            let value: Value = serde_json::from_str(list).ok()?;
            Some((token, list_items(&value)?))
        }
        None if fields.is_empty() => None,
        None => {
            let obj = fields
                .into_iter()
                .filter(|(k, _)| k != "token")
                .map(|(k, v)| (k, Value::String(v)))
                .collect();
            Some((token, vec![Value::Object(obj)]))
        }
    }
}

/// `data_list` is a JSON array; tolerate a JSON string holding one, and a single object.
fn list_items(list: &Value) -> Option<Vec<Value>> {
    match list {
        Value::Array(items) => Some(items.clone()),
        Value::Object(_) => Some(vec![list.clone()]),
        Value::String(s) => match serde_json::from_str::<Value>(s).ok()? {
            Value::Array(items) => Some(items),
            obj @ Value::Object(_) => Some(vec![obj]),
            _ => None,
        },
        _ => None,
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn field<'a>(item: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, k| v.get(*k))
}

/// The IMEI a record is about, wherever the push format puts it.
pub fn imei_of(item: &Value) -> Option<String> {
    const PATHS: [&[&str]; 5] = [
        &["deviceImei"],
        &["imei"],
        &["_imei"],
        &["data", "_imei"],
        &["msg", "deviceImei"],
    ];
    PATHS
        .iter()
        .find_map(|p| field(item, p).filter(|v| !v.is_null()))
        .map(|v| text(Some(v)))
}

/// The duplicate-detection key of a record (see the module docs).
pub fn dedup_key(endpoint: &str, item: &Value, offline_callback_path: &str) -> String {
    let imei = imei_of(item).unwrap_or_default();
    let f = |path: &[&str]| text(field(item, path));
    let endpoint = normalize(endpoint);
    match endpoint.as_str() {
        "/pushgps" => format!("{imei}|{}|{}|{}", f(&["gpsTime"]), f(&["lat"]), f(&["lng"])),
        "/pushalarm" => format!(
            "{imei}|{}|{}|{}|{}",
            f(&["msg", "alarmTime"]),
            f(&["msg", "alertType"]),
            f(&["msg", "lat"]),
            f(&["msg", "lng"])
        ),
        "/pushhb" => format!("{imei}|{}", f(&["gateTime"])),
        "/pushevent" => format!("{imei}|{}|{}", f(&["type"]), f(&["gateTime"])),
        "/pushInstructResponse" => format!("{imei}|{}|{}", f(&["_serverFlagId"]), f(&["_content"])),
        p if p == normalize(offline_callback_path) => format!(
            "{imei}|{}|{}",
            f(&["data", "_serverFlagId"]),
            f(&["data", "_content"])
        ),
        _ => item.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GPS_FORM: &str = "token=abc&data_list=%5B%7B%22deviceImei%22%3A%22868120246598152%22%2C%22gpsTime%22%3A%222023-01-13+02%3A24%3A37%22%2C%22lat%22%3A22.576539%2C%22lng%22%3A113.942885%7D%5D";

    #[test]
    fn form_body_yields_token_and_records() {
        let (token, items) = parse_push(GPS_FORM.as_bytes(), false).unwrap_or_default();
        assert_eq!(token.as_deref(), Some("abc"));
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["deviceImei"], "868120246598152");
        assert_eq!(items[0]["gpsTime"], "2023-01-13 02:24:37");
    }

    #[test]
    fn json_object_body_is_one_record_with_its_token() {
        let body = br#"{"code":0,"msg":"ok","data":{"_imei":"1","_serverFlagId":7,"_content":"OK"},"token":"t"}"#;
        let (token, items) = parse_push(body, true).unwrap_or_default();
        assert_eq!(token.as_deref(), Some("t"));
        assert_eq!(items.len(), 1);
        assert_eq!(imei_of(&items[0]).as_deref(), Some("1"));
    }

    #[test]
    fn json_array_body_is_many_records() {
        let (_, items) = parse_push(br#"[{"a":1},{"a":2}]"#, false).unwrap_or_default();
        assert_eq!(items.len(), 2);
    }

    #[test]
    fn garbage_is_refused() {
        assert!(parse_push(b"data_list=not-json", false).is_none());
        assert!(parse_push(b"{not json", true).is_none());
        assert!(parse_push(b"", false).is_none());
    }

    #[test]
    fn gps_key_uses_imei_time_and_position() {
        let a = json!({"deviceImei":"1","gpsTime":"2023-01-13 02:24:37","lat":1.5,"lng":2.5,"gateTime":"x"});
        let b = json!({"deviceImei":"1","gpsTime":"2023-01-13 02:24:37","lat":1.5,"lng":2.5,"gateTime":"y"});
        let c = json!({"deviceImei":"1","gpsTime":"2023-01-13 02:24:38","lat":1.5,"lng":2.5});
        assert_eq!(
            dedup_key("/pushgps", &a, "/cb"),
            dedup_key("pushgps", &b, "/cb")
        );
        assert_ne!(
            dedup_key("/pushgps", &a, "/cb"),
            dedup_key("/pushgps", &c, "/cb")
        );
    }

    #[test]
    fn alarm_key_reads_the_nested_message() {
        let a = json!({"imei":"2","msg":{"alarmTime":"t","alertType":1,"lat":1,"lng":2}});
        let b = json!({"imei":"2","msg":{"alarmTime":"t","alertType":3,"lat":1,"lng":2}});
        assert_ne!(
            dedup_key("/pushalarm", &a, "/cb"),
            dedup_key("/pushalarm", &b, "/cb")
        );
    }

    #[test]
    fn offline_callback_key_reads_data() {
        let a = json!({"data":{"_imei":"3","_serverFlagId":1,"_content":"OK"}});
        let b = json!({"data":{"_imei":"3","_serverFlagId":2,"_content":"OK"}});
        assert_ne!(dedup_key("/cb", &a, "/cb"), dedup_key("/cb", &b, "/cb"));
    }

    #[test]
    fn unknown_endpoint_key_is_the_whole_record() {
        let a = json!({"x":1});
        assert_eq!(dedup_key("/other", &a, "/cb"), r#"{"x":1}"#);
    }

    #[test]
    fn imei_is_found_in_every_push_shape() {
        assert_eq!(imei_of(&json!({"deviceImei":"1"})).as_deref(), Some("1"));
        assert_eq!(imei_of(&json!({"imei":"2"})).as_deref(), Some("2"));
        assert_eq!(imei_of(&json!({"_imei":"3"})).as_deref(), Some("3"));
        assert_eq!(
            imei_of(&json!({"msg":{"deviceImei":"4"}})).as_deref(),
            Some("4")
        );
        assert_eq!(imei_of(&json!({"x":1})), None);
    }

    #[test]
    fn records_count_duplicates_and_respect_the_store_bound() {
        let mut config = ReceiverConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)));
        config.max_stored = 2;
        let mut state = State::default();
        let now = Instant::now();
        let rec = json!({"deviceImei":"1","gpsTime":"t","lat":1,"lng":2});
        record(&mut state, &config, "/pushgps", None, rec.clone(), now);
        record(&mut state, &config, "/pushgps", None, rec.clone(), now);
        record(&mut state, &config, "/pushgps", None, rec, now);
        let view = ReceiverView { state: &state };
        assert_eq!(view.count("/pushgps"), 3);
        assert_eq!(view.unique("/pushgps"), 1);
        assert_eq!(view.duplicates("pushgps"), 2);
        assert_eq!(view.records("/pushgps").len(), 2);
        assert_eq!(view.count_for_imei("/pushgps", "1"), 3);
        assert_eq!(
            view.imei_counts("/pushgps").collect::<Vec<_>>(),
            vec![(
                "1",
                ImeiCount {
                    total: 3,
                    duplicates: 2
                }
            )]
        );
        assert_eq!(state.not_stored, 1);
    }
}
