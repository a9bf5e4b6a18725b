//! Gateway: the supervisor of one device port. An accept task takes connections and spawns
//! one DeviceSession per connection, linked to the gateway; past the connection budget it
//! closes a new connection at once (counted in `iothub_connections_refused_total`). With the
//! PROXY protocol on, a connection's header is read (bounded in time and length) before its
//! session starts, and one without a valid header is closed. A session that panics dies
//! alone: the gateway counts it and removes the registry entry it owned; the device
//! reconnects. Stopping the gateway stops accepting first, then stops every session (each
//! publishes its logout) and waits for them.
//!
//! The gateway also sends every session its tick (idle, login and grace timeouts): one timer
//! per port instead of one per connection, which a session would carry for its whole life.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iothub::protocol::Protocol;
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use super::proxy_protocol::{read_header, HeaderError, HEADER_TIMEOUT};
use super::session::{DeviceSession, SessionArgs, SessionDeps, SessionMsg, TICK_PERIOD};
use crate::config::KeepaliveConfig;
use crate::registry::Registry;

pub struct Gateway<P: Protocol>(std::marker::PhantomData<P>);

impl<P: Protocol> Default for Gateway<P> {
    fn default() -> Self {
        Gateway(std::marker::PhantomData)
    }
}

pub struct GatewayArgs<P: Protocol> {
    pub protocol: Arc<P>,
    pub listener: TcpListener,
    pub deps: Arc<SessionDeps>,
    pub admission: Admission,
}

pub enum GatewayMsg {}

pub struct GatewayState {
    accept: JoinHandle<()>,
    ticker: JoinHandle<()>,
    registry: Registry,
    name: &'static str,
    local_addr: SocketAddr,
}

impl<P: Protocol> Actor for Gateway<P> {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs<P>,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let local_addr = args.listener.local_addr()?;
        let name = args.protocol.name();
        let registry = args.deps.registry.clone();
        let ticker = tokio::spawn(tick_sessions::<P>(myself.clone()));
        let accept = tokio::spawn(accept_loop(
            args.protocol,
            args.listener,
            args.deps,
            args.admission,
            myself,
        ));
        tracing::info!(protocol = name, %local_addr, "gateway listening");
        Ok(GatewayState {
            accept,
            ticker,
            registry,
            name,
            local_addr,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        _state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<GatewayMsg>,
        event: SupervisionEvent,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            // post_stop does not run after a panic, so the registry entry is cleaned here.
            metrics::counter!("iothub_sessions_failed_total", "protocol" => state.name)
                .increment(1);
            tracing::error!(protocol = state.name, %error, "device session failed");
            state.registry.unregister_session(cell.get_id());
            metrics::gauge!("iothub_connections", "protocol" => state.name).decrement(1.0);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<GatewayMsg>,
        state: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        state.accept.abort();
        state.ticker.abort();
        myself
            .stop_children_and_wait(Some("shutdown".into()), Some(Duration::from_secs(10)))
            .await;
        tracing::info!(protocol = state.name, local_addr = %state.local_addr, "gateway stopped");
        Ok(())
    }
}

/// Every [`TICK_PERIOD`], a tick to each session of the gateway.
async fn tick_sessions<P: Protocol>(gateway: ActorRef<GatewayMsg>) {
    let mut tick = tokio::time::interval(TICK_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        for session in gateway.get_children() {
            // A session that is stopping no longer takes messages; nothing to tick then.
            let _ = session.send_message(SessionMsg::<P::Frame>::Tick);
        }
    }
}

async fn accept_loop<P: Protocol>(
    protocol: Arc<P>,
    listener: TcpListener,
    deps: Arc<SessionDeps>,
    admission: Admission,
    gateway: ActorRef<GatewayMsg>,
) {
    let name = protocol.name();
    let starter = SessionStarter {
        protocol,
        deps,
        gateway,
    };
    let mut refused_at_limit = RefusalLog::new(REFUSAL_LOG_INTERVAL);
    let refused_headers = Arc::new(Mutex::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)));
    // Connections whose PROXY header is being read, as many as the budget lets in; they are
    // cancelled with this loop when the gateway stops.
    let mut handshakes = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
        };
        let (mut stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                metrics::counter!("iothub_accept_errors_total", "protocol" => name).increment(1);
                tracing::warn!(protocol = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the budget the connection is accepted and closed at once: left in the listen
        // backlog it would hang until the device gives up, whereas a close makes the device
        // back off and reconnect, and a balancer in front try another node.
        let Ok(permit) = admission.connection_budget.clone().try_acquire_owned() else {
            drop(stream);
            refused(name, "limit");
            if let Some(count) = refused_at_limit.record(Instant::now()) {
                tracing::warn!(
                    gateway = name,
                    refused = count,
                    "connection budget full: refusing new device connections"
                );
            }
            continue;
        };
        metrics::counter!("iothub_connections_accepted_total", "protocol" => name).increment(1);
        if let Err(e) = set_keepalive(&stream, &admission.keepalive) {
            // The connection still works; only a vanished device is found later.
            tracing::debug!(protocol = name, %peer, error = %e, "could not set TCP keepalive");
        }
        if !admission.proxy_protocol {
            starter.start(stream, peer, permit).await;
            continue;
        }
        let starter = starter.clone();
        let refused_headers = refused_headers.clone();
        handshakes.spawn(async move {
            let why = match tokio::time::timeout(HEADER_TIMEOUT, read_header(&mut stream)).await {
                Ok(Ok(source)) => {
                    starter.start(stream, source.unwrap_or(peer), permit).await;
                    return;
                }
                Ok(Err(HeaderError::Invalid)) => "no valid PROXY protocol header",
                Err(_) => "no whole PROXY protocol header in time",
                // A probe that opens and closes (a balancer's health check), or a connection
                // lost: nothing a device sent was refused.
                Ok(Err(HeaderError::ClosedEmpty)) => return,
                Ok(Err(HeaderError::Io(e))) => {
                    tracing::debug!(protocol = name, %peer, error = %e, "connection lost before its PROXY header");
                    return;
                }
            };
            drop(stream);
            refused(name, "proxy_header");
            let due = refused_headers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(Instant::now());
            if let Some(count) = due {
                tracing::warn!(
                    gateway = name,
                    refused = count,
                    last_peer = %peer,
                    last_reason = why,
                    "closing connections without a PROXY protocol header (gateway's proxy_protocol is on)"
                );
            }
        });
    }
}

/// How a gateway lets connections in.
pub struct Admission {
    /// The node's connection budget, shared by both device ports.
    pub connection_budget: Arc<Semaphore>,
    pub keepalive: KeepaliveConfig,
    /// Every connection starts with a PROXY protocol header naming the device's address.
    pub proxy_protocol: bool,
}

/// Starts the session of an admitted connection under the gateway.
struct SessionStarter<P: Protocol> {
    protocol: Arc<P>,
    deps: Arc<SessionDeps>,
    gateway: ActorRef<GatewayMsg>,
}

impl<P: Protocol> Clone for SessionStarter<P> {
    fn clone(&self) -> Self {
        SessionStarter {
            protocol: self.protocol.clone(),
            deps: self.deps.clone(),
            gateway: self.gateway.clone(),
        }
    }
}

impl<P: Protocol> SessionStarter<P> {
    /// `peer` is the device's address: the connection's own, or the one its PROXY header named.
    async fn start(&self, stream: TcpStream, peer: SocketAddr, permit: OwnedSemaphorePermit) {
        let args = SessionArgs {
            protocol: self.protocol.clone(),
            stream,
            deps: self.deps.clone(),
            connection_permit: Some(permit),
            peer,
        };
        if let Err(e) = Actor::spawn_linked(
            None,
            DeviceSession::<P>::default(),
            args,
            self.gateway.get_cell(),
        )
        .await
        {
            tracing::warn!(protocol = self.protocol.name(), %peer, error = %e, "could not start device session");
        }
    }
}

/// Turns on TCP keepalive with the configured timing on an accepted device socket.
fn set_keepalive(stream: &TcpStream, keepalive: &KeepaliveConfig) -> std::io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(keepalive.time)
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    SockRef::from(stream).set_tcp_keepalive(&params)
}

/// Counts a connection closed before it became a session, by why.
fn refused(gateway: &'static str, reason: &'static str) {
    metrics::counter!("iothub_connections_refused_total", "gateway" => gateway, "reason" => reason)
        .increment(1);
}

/// Least time between two log lines about refused connections of one kind: a storm of
/// refusals is one line per interval with its count, not one line per connection.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// When to log refused connections: the first at once, then at most one line per interval
/// carrying how many were refused since the previous line.
struct RefusalLog {
    interval: Duration,
    last_line: Option<Instant>,
    unlogged: u64,
}

impl RefusalLog {
    fn new(interval: Duration) -> RefusalLog {
        RefusalLog {
            interval,
            last_line: None,
            unlogged: 0,
        }
    }

    /// Records one refusal at `now`; returns the count to log when a line is due.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        let due = self
            .last_line
            .is_none_or(|last| now.duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        self.last_line = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_logged_at_once() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        assert_eq!(log.record(Instant::now()), Some(1));
    }

    #[test]
    fn refusals_within_the_interval_wait_for_the_next_line() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let start = Instant::now();
        log.record(start);
        assert_eq!(log.record(start + Duration::from_secs(3)), None);
    }

    #[test]
    fn the_next_line_carries_every_refusal_since_the_last() {
        let mut log = RefusalLog::new(Duration::from_secs(10));
        let start = Instant::now();
        log.record(start);
        for s in 1..=4 {
            log.record(start + Duration::from_secs(s));
        }
        assert_eq!(log.record(start + Duration::from_secs(10)), Some(5));
    }

    /// An accepted socket and the client's end of it, on loopback.
    async fn accepted_socket() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, client)
    }

    const KEEPALIVE: KeepaliveConfig = KeepaliveConfig {
        time: Duration::from_secs(60),
        interval: Duration::from_secs(10),
        retries: 5,
    };

    #[tokio::test]
    async fn an_accepted_socket_gets_keepalive() {
        let (accepted, _client) = accepted_socket().await;
        set_keepalive(&accepted, &KEEPALIVE).unwrap();
        assert!(SockRef::from(&accepted).keepalive().unwrap());
    }

    #[tokio::test]
    async fn keepalive_probes_start_after_the_configured_silence() {
        let (accepted, _client) = accepted_socket().await;
        set_keepalive(&accepted, &KEEPALIVE).unwrap();
        assert_eq!(
            SockRef::from(&accepted).tcp_keepalive_time().unwrap(),
            Duration::from_secs(60)
        );
    }

    #[tokio::test]
    async fn keepalive_probes_follow_the_configured_interval() {
        let (accepted, _client) = accepted_socket().await;
        set_keepalive(&accepted, &KEEPALIVE).unwrap();
        assert_eq!(
            SockRef::from(&accepted).tcp_keepalive_interval().unwrap(),
            Duration::from_secs(10)
        );
    }

    #[tokio::test]
    async fn keepalive_gives_up_after_the_configured_probes() {
        let (accepted, _client) = accepted_socket().await;
        set_keepalive(&accepted, &KEEPALIVE).unwrap();
        assert_eq!(SockRef::from(&accepted).tcp_keepalive_retries().unwrap(), 5);
    }
}
