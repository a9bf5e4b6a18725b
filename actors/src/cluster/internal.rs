//! The node-to-node listener of cluster mode, and the client side of its calls.
//!
//! - `POST /internal/v1/instruct`: another node's API received a sendInstruct for a device
//!   this node owns; this node hands it to the local session and answers with the
//!   [`Delivery`], exactly what its own API would have used.
//! - `POST /internal/v1/takeover`: the device logged in at another node; close the local
//!   session if it is still the one named.
//! - `GET /internal/v1/identity`: the gateId and instance of this process, so a node starting
//!   with the same gateId can tell a live holder from a dead one.
//! - `POST /internal/v1/media/signal`: another node's media server wants a stream of a
//!   device this node holds started (0x9101) or closed (0x9102); this node's
//!   [`DeviceSignals`] sends it through the local session.
//!
//! Every call carries the api token in [`TOKEN_HEADER`](super::TOKEN_HEADER); the listener
//! belongs on a private network all the same.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use iothub::command::Instruction;
use iothub::imei::Imei;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{Cluster, Identity, TOKEN_HEADER};
use crate::config::HttpConfig;
use crate::gateway::control::{self, Delivery};
use crate::http_server;
use crate::media::signals::{DeviceSignals, LiveSignal, SignalError};
use crate::registry::Registry;

/// The media server's signals, set once the media server has started (after the internal
/// listener); until then a media signal is answered [`MediaSignalAnswer::NotHere`].
pub type MediaSignalsSlot = Arc<OnceLock<DeviceSignals>>;

/// Largest accepted body; an instruction is a few hundred bytes.
const MAX_BODY_BYTES: u64 = 64 * 1024;

/// An instruction forwarded to the node that owns the device.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedInstruction {
    pub imei: Imei,
    pub instruction: Instruction,
    pub timeout_ms: u64,
}

/// The owner's answer to a forwarded instruction.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardAnswer {
    Delivered(Delivery),
    /// The device has no session on this node (it left, or the route was stale).
    NotHere,
}

/// "The device logged in elsewhere: close the session that owned it as `owner`."
#[derive(Debug, Serialize, Deserialize)]
pub struct TakeoverNotice {
    pub imei: Imei,
    pub owner: String,
}

/// "Send this live signal to the device's session on your node."
#[derive(Debug, Serialize, Deserialize)]
pub struct MediaSignal {
    pub imei: Imei,
    pub channel: u8,
    pub signal: LiveSignal,
}

/// The answer to a [`MediaSignal`].
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaSignalAnswer {
    /// The session put it on the wire.
    Sent,
    /// The device has no session on this node.
    NotHere,
    /// The session refused it (the reason).
    Refused(String),
    /// The session did not take it in time.
    NoAnswer,
}

/// Why a forwarded instruction has no answer from the owner.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owner could not be reached: the instruction never left this node.
    #[error("gateway {gate} at {addr} cannot be reached: {reason}")]
    Unreachable {
        gate: String,
        addr: String,
        reason: String,
    },
    /// The owner took the request but the exchange broke or timed out: whether the device
    /// got the instruction is unknown.
    #[error("gateway {gate} at {addr} went away mid-request: {reason}")]
    Broken {
        gate: String,
        addr: String,
        reason: String,
    },
}

/// Hands an instruction to the owning node and waits for its answer, at most
/// `timeout` + 2 × `margin` (the owner itself gives up after `timeout` + `margin`).
pub async fn forward(
    cluster: &Cluster,
    gate: &str,
    addr: &str,
    imei: Imei,
    instruction: Instruction,
    timeout: Duration,
    margin: Duration,
) -> Result<ForwardAnswer, ForwardError> {
    let body = ForwardedInstruction {
        imei,
        instruction,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    post(cluster, gate, addr, "instruct", timeout + margin * 2, &body).await
}

/// POSTs `body` to another node's internal `path` and reads its JSON answer.
async fn post<T: serde::Serialize, A: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    gate: &str,
    addr: &str,
    path: &str,
    timeout: Duration,
    body: &T,
) -> Result<A, ForwardError> {
    let broken = |reason: String| ForwardError::Broken {
        gate: gate.to_string(),
        addr: addr.to_string(),
        reason,
    };
    let response = cluster
        .client
        .post(format!("http://{addr}/internal/v1/{path}"))
        .header(TOKEN_HEADER, &cluster.token)
        .timeout(timeout)
        .json(body)
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                ForwardError::Unreachable {
                    gate: gate.to_string(),
                    addr: addr.to_string(),
                    reason: e.to_string(),
                }
            } else {
                broken(e.to_string())
            }
        })?;
    if !response.status().is_success() {
        return Err(broken(format!("answered HTTP {}", response.status())));
    }
    response
        .json::<A>()
        .await
        .map_err(|e| broken(format!("unreadable answer: {e}")))
}

/// Asks the node holding the device's session to send `signal`; waits at most the
/// session's own signal timeout plus a margin.
pub async fn media_signal(
    cluster: &Cluster,
    gate: &str,
    addr: &str,
    signal: &MediaSignal,
) -> Result<MediaSignalAnswer, ForwardError> {
    post(
        cluster,
        gate,
        addr,
        "media/signal",
        Duration::from_secs(10),
        signal,
    )
    .await
}

/// The running internal listener.
pub struct InternalServer {
    pub local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl InternalServer {
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

struct Shared {
    cluster: Arc<Cluster>,
    registry: Registry,
    /// Added to a forwarded instruction's timeout, as the API does for its own.
    margin: Duration,
    /// The API's bound of `timeOut` (`api.max_timeout_secs`), applied to forwarded ones too.
    max_timeout: Duration,
    media: MediaSignalsSlot,
}

/// Binds `listen` and serves the node-to-node calls with the bounds of `http`; a forwarded
/// instruction waits at most `max_timeout` (the API's own bound) for its device; media
/// signals go through what `media` holds once it is set.
pub async fn start(
    listen: SocketAddr,
    cluster: Arc<Cluster>,
    registry: Registry,
    margin: Duration,
    max_timeout: Duration,
    http: HttpConfig,
    media: MediaSignalsSlot,
) -> anyhow::Result<InternalServer> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cluster.internal_listen: cannot listen on {listen}"))?;
    let local_addr = listener.local_addr()?;
    let shared = Arc::new(Shared {
        cluster,
        registry,
        margin,
        max_timeout,
        media,
    });
    let (stop, stopped) = oneshot::channel::<()>();
    let task = http_server::spawn(
        "internal",
        listener,
        http,
        None,
        warp::service(routes(shared)),
        async move {
            let _ = stopped.await;
        },
    );
    tracing::info!(addr = %local_addr, "cluster internal listener ready");
    Ok(InternalServer {
        local_addr,
        stop: Some(stop),
        task,
    })
}

fn routes(
    shared: Arc<Shared>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let with = {
        let shared = shared.clone();
        warp::any().map(move || shared.clone())
    };
    let authorized = with
        .clone()
        .and(warp::header::optional::<String>(TOKEN_HEADER))
        .and_then(|shared: Arc<Shared>, token: Option<String>| async move {
            let ok = token
                .is_some_and(|t| bool::from(t.as_bytes().ct_eq(shared.cluster.token.as_bytes())));
            if ok {
                Ok(shared)
            } else {
                Err(warp::reject::custom(Unauthorized))
            }
        });
    let identity = warp::path!("internal" / "v1" / "identity")
        .and(warp::get())
        .and(authorized.clone())
        .map(|shared: Arc<Shared>| {
            warp::reply::json(&Identity {
                gate_id: shared.cluster.gate_id.clone(),
                instance: shared.cluster.instance.clone(),
            })
            .into_response()
        });
    let instruct = warp::path!("internal" / "v1" / "instruct")
        .and(warp::post())
        .and(authorized.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::json())
        .then(
            |shared: Arc<Shared>, request: ForwardedInstruction| async move {
                metrics::counter!("iothub_cluster_forwarded_in_total").increment(1);
                let answer = instruct_local(&shared, request).await;
                warp::reply::json(&answer).into_response()
            },
        );
    let media_signal = warp::path!("internal" / "v1" / "media" / "signal")
        .and(warp::post())
        .and(authorized.clone())
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::json())
        .then(|shared: Arc<Shared>, request: MediaSignal| async move {
            metrics::counter!("iothub_cluster_media_signals_in_total").increment(1);
            let answer = media_signal_local(&shared, request).await;
            warp::reply::json(&answer).into_response()
        });
    let takeover = warp::path!("internal" / "v1" / "takeover")
        .and(warp::post())
        .and(authorized)
        .and(warp::body::content_length_limit(MAX_BODY_BYTES))
        .and(warp::body::json())
        .map(|shared: Arc<Shared>, notice: TakeoverNotice| {
            if let Some(pid) = shared.cluster.local_pid(&notice.owner) {
                shared.registry.evict(notice.imei, pid);
            }
            StatusCode::NO_CONTENT.into_response()
        });
    identity
        .or(instruct)
        .unify()
        .or(takeover)
        .unify()
        .or(media_signal)
        .unify()
        .recover(|r: warp::Rejection| async move {
            let status = if r.find::<Unauthorized>().is_some() {
                StatusCode::UNAUTHORIZED
            } else if r.is_not_found() {
                StatusCode::NOT_FOUND
            } else {
                StatusCode::BAD_REQUEST
            };
            Ok::<_, Infallible>(status.into_response())
        })
        .unify()
}

#[derive(Debug)]
struct Unauthorized;
impl warp::reject::Reject for Unauthorized {}

async fn instruct_local(shared: &Shared, request: ForwardedInstruction) -> ForwardAnswer {
    let session = match shared.registry.lookup(request.imei).await {
        Ok(Some(session)) => session,
        Ok(None) | Err(_) => return ForwardAnswer::NotHere,
    };
    let timeout = forwarded_timeout(request.timeout_ms, shared.max_timeout);
    ForwardAnswer::Delivered(
        control::instruct(&session, request.instruction, timeout, shared.margin).await,
    )
}

async fn media_signal_local(shared: &Shared, request: MediaSignal) -> MediaSignalAnswer {
    let Some(signals) = shared.media.get() else {
        return MediaSignalAnswer::NotHere;
    };
    match signals
        .signal_local(request.imei, request.channel, request.signal)
        .await
    {
        Ok(()) => MediaSignalAnswer::Sent,
        Err(SignalError::Offline | SignalError::Unreachable(_)) => MediaSignalAnswer::NotHere,
        Err(SignalError::Refused(why)) => MediaSignalAnswer::Refused(why),
        Err(SignalError::NoAnswer) => MediaSignalAnswer::NoAnswer,
    }
}

/// How long a forwarded instruction may wait for its device: what the sending node asked,
/// never more than this node's API accepts for its own requests, so that a peer (or a
/// forged call with the token) cannot hold a session's instruction for longer.
fn forwarded_timeout(timeout_ms: u64, max_timeout: Duration) -> Duration {
    Duration::from_millis(timeout_ms).min(max_timeout)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::*;
    use crate::cluster::node::Nodes;
    use crate::cluster::redis::{self, Keys};
    use crate::cluster::routes::Routes;
    use crate::config::RedisConfig;
    use crate::gateway::control::{InstructOutcome, SessionControl, SessionRef};
    use crate::registry::RegistryActor;

    const MAX: Duration = Duration::from_secs(120);
    const MARGIN: Duration = Duration::from_millis(200);
    const TOKEN: &str = "internal-test-token";

    /// A session that takes instructions and never answers them (a device that stays
    /// silent and a session that waits as long as it is told).
    struct WedgedSession;

    impl Actor for WedgedSession {
        type Msg = SessionControl;
        type State = Vec<oneshot::Sender<InstructOutcome>>;
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<SessionControl>,
            (): (),
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(Vec::new())
        }

        async fn handle(
            &self,
            _: ActorRef<SessionControl>,
            msg: SessionControl,
            held: &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let SessionControl::Instruct { reply, .. } = msg {
                held.push(reply);
            }
            Ok(())
        }
    }

    /// A cluster handle good for the listener's token check and the client; it never
    /// reaches Redis (the pool connects on first use).
    fn cluster() -> Arc<Cluster> {
        let config = RedisConfig {
            host: Some("127.0.0.1".to_string()),
            port: 6379,
            password: None,
            db: 0,
            key_prefix: "iothub-internal-test".to_string(),
            lease: Duration::from_secs(30),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
        };
        let pool = redis::pool(&config).expect("pool");
        let keys = Keys::new(&config.key_prefix);
        Arc::new(Cluster {
            gate_id: "gate-a".to_string(),
            instance: "instance-a".to_string(),
            advertise: String::new(),
            routes: Routes::new(pool.clone(), keys.clone(), "gate-a", config.lease),
            nodes: Nodes::new(pool.clone(), keys.clone(), config.lease),
            pool,
            keys,
            lease: config.lease,
            token: TOKEN.to_string(),
            client: reqwest::Client::new(),
        })
    }

    #[tokio::test]
    async fn forwarded_instruction_waits_no_longer_than_the_api_bound() {
        let (registry_actor, _) = Actor::spawn(None, RegistryActor, None)
            .await
            .expect("registry");
        let registry = Registry {
            actor: registry_actor,
            cluster: None,
        };
        let (session, _) = Actor::spawn(None, WedgedSession, ())
            .await
            .expect("session");
        let imei = Imei::parse("862798050240873").expect("imei");
        registry
            .register(
                imei,
                SessionRef {
                    id: session.get_id(),
                    control: session.get_derived(),
                },
            )
            .await
            .expect("registered");
        let max_timeout = Duration::from_secs(1);
        let http = HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_connections: 16,
        };
        let cluster = cluster();
        let server = start(
            "127.0.0.1:0".parse().expect("address"),
            cluster.clone(),
            registry,
            MARGIN,
            max_timeout,
            http,
            MediaSignalsSlot::default(),
        )
        .await
        .expect("internal listener");
        let addr = server.local_addr.to_string();
        let started = Instant::now();
        let asked_for_an_hour = forward(
            &cluster,
            "gate-a",
            &addr,
            imei,
            Instruction {
                pro_no: 128,
                content: "STATUS#".to_string(),
                server_flag_id: 1,
            },
            Duration::from_secs(3600),
            MARGIN,
        );
        let answer = tokio::time::timeout(Duration::from_secs(10), asked_for_an_hour)
            .await
            .expect("the owner answers within its own bound, not the hour asked")
            .expect("forwarded");
        assert!(
            matches!(answer, ForwardAnswer::Delivered(Delivery::NoAnswer)),
            "{answer:?}"
        );
        assert!(
            started.elapsed() < max_timeout + MARGIN + Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        server.shutdown().await;
    }

    #[test]
    fn forwarded_timeout_within_the_bound_is_kept() {
        assert_eq!(forwarded_timeout(30_000, MAX), Duration::from_secs(30));
    }

    #[test]
    fn forwarded_timeout_past_the_bound_is_capped() {
        assert_eq!(forwarded_timeout(3_600_000, MAX), MAX);
    }

    #[test]
    fn forwarded_timeout_of_u64_max_is_capped() {
        assert_eq!(forwarded_timeout(u64::MAX, MAX), MAX);
    }

    /// A session that takes signals, keeps the instruction each one builds (with the
    /// address its device's connection reached) and says it sent it.
    struct SignalledSession(Arc<std::sync::Mutex<Vec<Instruction>>>);

    impl Actor for SignalledSession {
        type Msg = SessionControl;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _: ActorRef<SessionControl>,
            (): (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }

        async fn handle(
            &self,
            _: ActorRef<SessionControl>,
            msg: SessionControl,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            if let SessionControl::Signal { build, reply } = msg {
                let local = "10.1.2.3:21121".parse().ok();
                if let Ok(mut sent) = self.0.lock() {
                    sent.push(build(local));
                }
                let _ = reply.send(Ok(()));
            }
            Ok(())
        }
    }

    const SIGNALLED_IMEI: &str = "862798050240881";

    /// An internal listener whose node holds one signalled session; what it sent.
    async fn media_node() -> (
        InternalServer,
        Arc<Cluster>,
        Arc<std::sync::Mutex<Vec<Instruction>>>,
    ) {
        let (registry_actor, _) = Actor::spawn(None, RegistryActor, None)
            .await
            .expect("registry");
        let registry = Registry {
            actor: registry_actor,
            cluster: None,
        };
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (session, _) = Actor::spawn(None, SignalledSession(sent.clone()), ())
            .await
            .expect("session");
        registry
            .register(
                Imei::parse(SIGNALLED_IMEI).expect("imei"),
                SessionRef {
                    id: session.get_id(),
                    control: session.get_derived(),
                },
            )
            .await
            .expect("registered");
        let media = MediaSignalsSlot::default();
        let _ = media.set(DeviceSignals::new(registry.clone(), String::new(), 10_000));
        let http = HttpConfig {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_connections: 16,
        };
        let cluster = cluster();
        let server = start(
            "127.0.0.1:0".parse().expect("address"),
            cluster.clone(),
            registry,
            MARGIN,
            MAX,
            http,
            media,
        )
        .await
        .expect("internal listener");
        (server, cluster, sent)
    }

    #[tokio::test]
    async fn a_media_signal_reaches_the_session_with_this_node_s_address() {
        let (server, cluster, sent) = media_node().await;
        let signal = MediaSignal {
            imei: Imei::parse(SIGNALLED_IMEI).expect("imei"),
            channel: 2,
            signal: LiveSignal::Start,
        };
        let answer = media_signal(&cluster, "gate-a", &server.local_addr.to_string(), &signal)
            .await
            .expect("answered");
        assert_eq!(answer, MediaSignalAnswer::Sent);
        let sent = sent.lock().expect("sent").clone();
        assert_eq!(sent.len(), 1, "one signal reached the session");
        assert_eq!(sent[0].pro_no, 0x9101);
        let content: serde_json::Value = serde_json::from_str(&sent[0].content).expect("json");
        assert_eq!(content["videoIP"], "10.1.2.3");
        assert_eq!(content["videoTCPPort"], 10_000);
        assert_eq!(content["channel"], 2);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_media_signal_for_a_device_not_here_says_so() {
        let (server, cluster, _) = media_node().await;
        let signal = MediaSignal {
            imei: Imei::parse("862798050240899").expect("imei"),
            channel: 1,
            signal: LiveSignal::Stop,
        };
        let answer = media_signal(&cluster, "gate-a", &server.local_addr.to_string(), &signal)
            .await
            .expect("answered");
        assert_eq!(answer, MediaSignalAnswer::NotHere);
        server.shutdown().await;
    }

    #[tokio::test]
    async fn a_media_signal_without_the_token_is_refused() {
        let (server, _, sent) = media_node().await;
        let status = reqwest::Client::new()
            .post(format!(
                "http://{}/internal/v1/media/signal",
                server.local_addr
            ))
            .json(&MediaSignal {
                imei: Imei::parse(SIGNALLED_IMEI).expect("imei"),
                channel: 1,
                signal: LiveSignal::Start,
            })
            .send()
            .await
            .expect("answered")
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(sent.lock().expect("sent").is_empty());
        server.shutdown().await;
    }
}
