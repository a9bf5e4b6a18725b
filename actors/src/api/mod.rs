//! The instruction API of the Jimi hub, kept wire-compatible so customer platforms work
//! unchanged: `POST /api/device/sendInstruct` (form or JSON body), plus `GET /health` and
//! `GET /ready` for load balancers and orchestrators.
//!
//! Every sendInstruct answer that passed the token check is HTTP 200 with the Jimi envelope
//! (`code` 0, the outcome in `data._code`), because existing clients read only that. HTTP
//! status codes are kept for what happens before the request is understood: 401 (token),
//! 413 (body over 64 KiB), 503 (too many instructions in flight), 404/405 (routing).
//!
//! Flow: check the token, validate the fields ([`request`]), look the device up in the
//! registry, hand the instruction to its session and wait for the reply. The session answers
//! 600 itself when the device is silent for `timeOut`; the API adds its own deadline of
//! `timeOut` + 2 s on top so a wedged session can never hold a request forever.
//!
//! In cluster mode a device that is not on this node is looked up in Redis and the
//! instruction is handed to the node that owns it ([`crate::cluster`]); the owner's answer
//! comes back with the owner's `_gateId`. No route: `_code` 301. Redis unreachable: 301
//! with a `_msg` that says so. The owner cannot be reached: 300 (the instruction never left
//! this node). The owner went away mid-request: 400, and the instruction is not queued,
//! since the device may have received it.
//!
//! When the instruction cannot reach a device (not registered, session gone before it took
//! the instruction, or it died holding it: `_code` 300; no route: 301; no reply in time:
//! `_code` 600) and the request set `offlineFlag`, the instruction is queued in
//! [`OfflineCommands`] for the next login, and only then does the answer say it "is
//! converted to an offline command". A queued instruction after a 600 or a session death may reach the device twice (it may have
//! received the first copy): delivery is at least once, as in the Jimi hub.

pub mod request;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Buf, BufMut, BytesMut};
use futures::{Stream, StreamExt};
use iothub::command::{InstructCode, InstructionReply};
use serde::Serialize;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;
use warp::http::StatusCode;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use crate::cluster::internal::{self, ForwardAnswer, ForwardError};
use crate::config::Config;
use crate::gateway::control::{self, Delivery, NotAnswered};
use crate::health::Health;
use crate::http_server;
use crate::offline::OfflineCommands;
use crate::registry::{Registry, RouteError, Target};

use request::{Echo, Fields, Limits, SendInstruct};

/// Largest accepted request body. A sendInstruct is a few hundred bytes; the largest
/// `cmdContent` (JT/T parameter lists) stays far below this.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Extra time the API waits beyond `timeOut` for the session's own 600 answer.
pub const REPLY_MARGIN: Duration = Duration::from_secs(2);

/// Most sendInstruct requests waiting for a device at once; each holds a connection and a
/// task for up to `timeOut`, so this bounds what a flood of requests can pin.
pub const MAX_IN_FLIGHT: usize = 4096;

/// How long [`ApiServer::shutdown`] lets open requests finish before cutting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Top-level `msg` when the instruction really was queued for the next login (Jimi's text).
pub const MSG_CONVERTED: &str =
    "The device is offline or timed out, and the command is converted to an offline command";

/// What the API needs from the rest of the node.
pub struct ApiDeps {
    pub registry: Registry,
    pub offline: OfflineCommands,
    /// Reported as `_gateId`.
    pub gate_id: String,
    /// The node's failing parts, which make `/ready` answer 503.
    pub health: Health,
}

/// The running API server. Dropping it also stops the server (without the grace period
/// of [`ApiServer::shutdown`] being awaited).
pub struct ApiServer {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// The bound address (the real port when the configuration asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open requests finish for up to [`SHUTDOWN_GRACE`], then
    /// closes what is left.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            tracing::warn!(
                "api: requests still open after the shutdown grace period, closing them"
            );
            self.task.abort();
        }
    }
}

struct State {
    deps: ApiDeps,
    token: Vec<u8>,
    limits: Limits,
    in_flight: Semaphore,
}

/// Binds the API listener (`config.api.listen`; port 0 picks a free port) and serves it.
pub async fn start(config: &Config, deps: ApiDeps) -> anyhow::Result<ApiServer> {
    let listener = TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("api: cannot listen on {}", config.api.listen))?;
    let local_addr = listener.local_addr().context("api: listener address")?;
    let state = Arc::new(State {
        deps,
        token: config.api.token.as_bytes().to_vec(),
        limits: Limits {
            default_timeout: config.api.default_timeout,
            max_timeout: config.api.max_timeout,
        },
        in_flight: Semaphore::new(MAX_IN_FLIGHT),
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = http_server::spawn(
        "api",
        listener,
        config.http,
        None,
        warp::service(routes(state)),
        async move {
            // A dropped sender (ApiServer dropped) stops the server as well.
            let _ = stopped.await;
        },
    );
    tracing::info!(addr = %local_addr, "instruction API listening");
    Ok(ApiServer {
        local_addr,
        stop: Some(stop),
        task,
    })
}

fn routes(
    state: Arc<State>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let with_state = {
        let state = state.clone();
        warp::any().map(move || state.clone())
    };

    let send_instruct = warp::path!("api" / "device" / "sendInstruct")
        .and(warp::post())
        .and(with_state.clone())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(send_instruct);

    let health = warp::path!("health")
        .and(warp::get())
        .map(|| json_reply(StatusCode::OK, &serde_json::json!({"status": "ok"})));

    let ready = warp::path!("ready")
        .and(warp::get())
        .and(with_state)
        .then(ready);

    send_instruct
        .or(health)
        .unify()
        .or(ready)
        .unify()
        .recover(rejection)
        .unify()
}

fn json_reply<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A refusal before the request is understood: HTTP status + `{"code":<status>,"msg":...}`.
fn http_error(status: StatusCode, msg: &str) -> Response {
    json_reply(
        status,
        &serde_json::json!({"code": status.as_u16(), "msg": msg}),
    )
}

async fn rejection(r: Rejection) -> Result<Response, Infallible> {
    let response = if r.is_not_found() {
        http_error(StatusCode::NOT_FOUND, "not found")
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        http_error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if r.find::<warp::reject::InvalidHeader>().is_some() {
        http_error(StatusCode::BAD_REQUEST, "invalid header")
    } else {
        tracing::debug!(rejection = ?r, "api: request rejected");
        http_error(StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(response)
}

/// Ready when no part of the node is down (see [`Health`]) and the registry answers. The
/// device count is deliberately not shown on this unauthenticated port; it is in the metrics
/// (`iothub_registry_devices`).
async fn ready(state: Arc<State>) -> Response {
    let down = state.deps.health.down();
    if !down.is_empty() {
        return json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "failing", "failing": down}),
        );
    }
    match tokio::time::timeout(Duration::from_secs(2), state.deps.registry.count()).await {
        Ok(Ok(_)) => json_reply(StatusCode::OK, &serde_json::json!({"status": "ready"})),
        _ => json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"status": "registry not answering"}),
        ),
    }
}

/// Why the body could not be read.
enum BodyRead {
    TooLarge,
    Broken(String),
}

/// Collects the body, refusing it as soon as it passes [`MAX_BODY_BYTES`] (announced or
/// actually sent, so a chunked body without a length is bounded too).
async fn read_body<S, B>(content_length: Option<u64>, body: S) -> Result<bytes::Bytes, BodyRead>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    if content_length.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(BodyRead::TooLarge);
    }
    let capacity = content_length.map_or(1024, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    let mut body = std::pin::pin!(body);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| BodyRead::Broken(e.to_string()))?;
        if buf.len() + chunk.remaining() > MAX_BODY_BYTES {
            return Err(BodyRead::TooLarge);
        }
        buf.put(chunk);
    }
    Ok(buf.freeze())
}

async fn send_instruct<S, B>(
    state: Arc<State>,
    content_type: Option<String>,
    content_length: Option<u64>,
    body: S,
) -> Response
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let started = Instant::now();
    let received_ms = now_ms();
    let (label, response) = handle(&state, content_type, content_length, body, received_ms).await;
    metrics::counter!("iothub_api_requests_total", "code" => label).increment(1);
    metrics::histogram!("iothub_api_request_duration_seconds", "code" => label)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Answers one request; returns the metric label (`_code`, or the HTTP status of a refusal)
/// with the response.
async fn handle<S, B>(
    state: &State,
    content_type: Option<String>,
    content_length: Option<u64>,
    body: S,
    received_ms: i64,
) -> (&'static str, Response)
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let body = match read_body(content_length, body).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => {
            return (
                "413",
                http_error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &format!("body: larger than {MAX_BODY_BYTES} bytes"),
                ),
            )
        }
        Err(BodyRead::Broken(e)) => {
            return (
                "400",
                http_error(StatusCode::BAD_REQUEST, &format!("body: {e}")),
            )
        }
    };

    let fields = match Fields::from_body(content_type.as_deref(), &body) {
        Ok(f) => f,
        Err(e) => {
            // Nothing about any device is revealed, so no token is needed to say this.
            let answer = Answer::bad_parameter(e.to_string());
            return answer.into_response(state, &Echo::default_for_unreadable(), None, received_ms);
        }
    };

    let token_ok = fields
        .token()
        .is_some_and(|t| bool::from(t.as_bytes().ct_eq(&state.token)));
    if !token_ok {
        return (
            "401",
            http_error(StatusCode::UNAUTHORIZED, "token: invalid or missing"),
        );
    }

    let echo = fields.echo();
    let request = match fields.validate(&state.limits) {
        Ok(r) => r,
        Err(e) => {
            let answer = Answer::bad_parameter(e.to_string());
            return answer.into_response(state, &echo, None, received_ms);
        }
    };

    metrics::gauge!("iothub_api_instructions_in_flight")
        .set((MAX_IN_FLIGHT - state.in_flight.available_permits()) as f64);
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return (
            "503",
            http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many instructions in flight",
            ),
        );
    };

    let answer = deliver(state, &request).await;
    tracing::info!(
        imei = %request.imei,
        pro_no = request.instruction.pro_no,
        server_flag_id = request.instruction.server_flag_id,
        request_id = request.request_id.as_deref().unwrap_or(""),
        platform = request.platform.as_deref().unwrap_or(""),
        code = answer.code.code(),
        "sendInstruct"
    );
    answer.into_response(state, &echo, Some(&request), received_ms)
}

/// The outcome of one instruction, before it is put in the envelope.
struct Answer {
    code: InstructCode,
    /// Top-level `msg`.
    msg: String,
    /// `data._msg` when it is not the code's standard text.
    detail: Option<String>,
    reply: Option<InstructionReply>,
    /// `_gateId` when the device is on another node than the one answering.
    gate: Option<String>,
}

impl Answer {
    fn bad_parameter(detail: String) -> Answer {
        Answer {
            code: InstructCode::BadParameter,
            msg: InstructCode::BadParameter.message().to_string(),
            detail: Some(detail),
            reply: None,
            gate: None,
        }
    }

    fn plain(code: InstructCode, msg: impl Into<String>) -> Answer {
        Answer {
            code,
            msg: msg.into(),
            detail: None,
            reply: None,
            gate: None,
        }
    }

    fn into_response(
        self,
        state: &State,
        echo: &Echo,
        request: Option<&SendInstruct>,
        received_ms: i64,
    ) -> (&'static str, Response) {
        let label = self.code.code();
        let request_flag = request.map_or(echo.server_flag_id, |r| r.instruction.server_flag_id);
        let envelope = Envelope {
            code: 0,
            msg: self.msg,
            data: Data {
                code: label,
                msg: self
                    .detail
                    .unwrap_or_else(|| self.code.message().to_string()),
                imei: request.map_or_else(|| echo.imei.clone(), |r| r.imei.to_string()),
                pro_no: self
                    .reply
                    .as_ref()
                    .map(|r| r.pro_no)
                    .or(request.map(|r| r.instruction.pro_no))
                    .or(echo.pro_no),
                content: self
                    .reply
                    .as_ref()
                    .map(|r| r.content.clone())
                    .unwrap_or_default(),
                server_flag_id: self
                    .reply
                    .as_ref()
                    .map_or(request_flag, |r| r.server_flag_id),
                kind: request.map_or_else(|| echo.cmd_type.clone(), |r| r.cmd_type.clone()),
                language: request.map_or_else(|| echo.language.clone(), |r| r.language.clone()),
                time_out: request.map(|r| r.timeout.as_secs()),
                gate_id: self.gate.unwrap_or_else(|| state.deps.gate_id.clone()),
                route_client_time: received_ms,
                route_server_time: now_ms(),
            },
        };
        (label, json_reply(StatusCode::OK, &envelope))
    }
}

impl Echo {
    fn default_for_unreadable() -> Echo {
        Echo {
            imei: String::new(),
            pro_no: None,
            server_flag_id: 0,
            cmd_type: request::DEFAULT_CMD_TYPE.to_string(),
            language: None,
        }
    }
}

/// The Jimi response envelope (jimi-interfaces §2.2), fields in the documented order.
#[derive(Serialize)]
struct Envelope {
    code: i32,
    msg: String,
    data: Data,
}

#[derive(Serialize)]
struct Data {
    #[serde(rename = "_code")]
    code: &'static str,
    #[serde(rename = "_msg")]
    msg: String,
    #[serde(rename = "_imei")]
    imei: String,
    #[serde(rename = "_proNo")]
    pro_no: Option<u32>,
    #[serde(rename = "_content")]
    content: String,
    #[serde(rename = "_serverFlagId")]
    server_flag_id: u32,
    #[serde(rename = "_type")]
    kind: String,
    #[serde(rename = "_language", skip_serializing_if = "Option::is_none")]
    language: Option<String>,
    #[serde(rename = "_time_out", skip_serializing_if = "Option::is_none")]
    time_out: Option<u64>,
    #[serde(rename = "_gateId")]
    gate_id: String,
    /// Unix ms when the API received the request.
    #[serde(rename = "_route_client_time")]
    route_client_time: i64,
    /// Unix ms when the answer was ready.
    #[serde(rename = "_route_server_time")]
    route_server_time: i64,
}

/// Finds the device (this node, or in cluster mode the node its route names) and hands it
/// the instruction; never waits longer than `timeOut` + 2 × [`REPLY_MARGIN`].
async fn deliver(state: &State, request: &SendInstruct) -> Answer {
    let target = match state.deps.registry.target(request.imei).await {
        Ok(t) => t,
        Err(RouteError::RegistryDown(e)) => {
            tracing::error!(error = %e, "sendInstruct: registry lookup failed");
            return Answer::plain(InstructCode::InternalError, e.to_string());
        }
        Err(RouteError::Redis(e)) => {
            tracing::warn!(imei = %request.imei, error = %e, "sendInstruct: no route, Redis unreachable");
            metrics::counter!("iothub_api_route_errors_total", "reason" => "redis").increment(1);
            let text = format!(
                "The device is not connected to this node and the route table (Redis) cannot be reached: {e}; the command was not stored"
            );
            return Answer {
                detail: Some(text.clone()),
                ..Answer::plain(InstructCode::NoRoute, text)
            };
        }
    };
    let timeout = request.timeout;
    let instruction = request.instruction.clone();
    match target {
        Target::Local(session) => {
            let delivery = control::instruct(&session, instruction, timeout, REPLY_MARGIN).await;
            answer_delivery(state, request, delivery, None).await
        }
        Target::Remote { gate, addr } => {
            let Some(cluster) = state.deps.registry.cluster.as_deref() else {
                return Answer::plain(InstructCode::InternalError, "remote route without cluster");
            };
            metrics::counter!("iothub_cluster_forwarded_out_total").increment(1);
            let forwarded = internal::forward(
                cluster,
                &gate,
                &addr,
                request.imei,
                instruction,
                timeout,
                REPLY_MARGIN,
            )
            .await;
            match forwarded {
                Ok(ForwardAnswer::Delivered(delivery)) => {
                    answer_delivery(state, request, delivery, Some(gate)).await
                }
                Ok(ForwardAnswer::NotHere) => {
                    not_delivered(state, request, InstructCode::Offline).await
                }
                Err(e @ ForwardError::Unreachable { .. }) => {
                    tracing::warn!(imei = %request.imei, error = %e, "sendInstruct: owning node unreachable");
                    metrics::counter!("iothub_api_route_errors_total", "reason" => "node_unreachable")
                        .increment(1);
                    not_delivered(state, request, InstructCode::Offline).await
                }
                Err(e @ ForwardError::Broken { .. }) => {
                    tracing::warn!(imei = %request.imei, error = %e, "sendInstruct: owning node went away");
                    metrics::counter!("iothub_api_route_errors_total", "reason" => "node_lost")
                        .increment(1);
                    let text = format!(
                        "{e}; the device may or may not have received the command, which was not stored"
                    );
                    Answer {
                        detail: Some(text.clone()),
                        ..Answer::plain(InstructCode::NetworkError, text)
                    }
                }
            }
        }
        Target::NoRoute => not_delivered(state, request, InstructCode::NoRoute).await,
        Target::Offline => not_delivered(state, request, InstructCode::Offline).await,
    }
}

/// The answer for what a session (local, or on the owning node) made of the instruction;
/// `gate` names the owning node when it is not this one.
async fn answer_delivery(
    state: &State,
    request: &SendInstruct,
    delivery: Delivery,
    gate: Option<String>,
) -> Answer {
    let answer = match delivery {
        Delivery::Answered(Ok(reply)) => Answer {
            code: InstructCode::Ok,
            msg: "success".to_string(),
            detail: None,
            reply: Some(reply),
            gate: None,
        },
        Delivery::Answered(Err(NotAnswered {
            code: code @ (InstructCode::Offline | InstructCode::Timeout),
            ..
        })) => not_delivered(state, request, code).await,
        Delivery::Answered(Err(NotAnswered {
            code: InstructCode::BadParameter,
            detail: Some(detail),
        })) => Answer::bad_parameter(detail),
        Delivery::Answered(Err(NotAnswered { code, .. })) => Answer::plain(code, code.message()),
        // The session dropped the instruction: it died holding it, which means its
        // connection is gone. Answered as offline (300), not as a timeout.
        Delivery::SessionGone => not_delivered(state, request, InstructCode::Offline).await,
        Delivery::NoAnswer => {
            tracing::warn!(imei = %request.imei, "sendInstruct: session did not answer by its own deadline");
            not_delivered(state, request, InstructCode::Timeout).await
        }
    };
    Answer { gate, ..answer }
}

/// 300 or 600: queue the instruction when the request asked for it, and say honestly
/// whether that happened.
async fn not_delivered(state: &State, request: &SendInstruct, code: InstructCode) -> Answer {
    if !request.offline {
        let msg = match code {
            InstructCode::Timeout => {
                "The device did not answer in time; the command was not stored (offlineFlag is not set)"
            }
            InstructCode::NoRoute => {
                "No gateway node holds the device (no route in Redis); the command was not stored (offlineFlag is not set)"
            }
            _ => "The device is offline; the command was not stored (offlineFlag is not set)",
        };
        return Answer::plain(code, msg);
    }
    match state
        .deps
        .offline
        .enqueue(request.imei, request.instruction.clone())
        .await
    {
        Ok(id) => {
            tracing::info!(imei = %request.imei, id, "sendInstruct: queued as offline command");
            Answer::plain(code, MSG_CONVERTED)
        }
        Err(e) => {
            tracing::warn!(imei = %request.imei, error = %e, "sendInstruct: offline queueing failed");
            Answer::plain(
                code,
                format!(
                    "The device is offline or timed out, and the command could not be stored as an offline command: {e}"
                ),
            )
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
