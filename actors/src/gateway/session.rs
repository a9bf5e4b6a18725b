//! DeviceSession: one actor per device connection, for every protocol.
//!
//! A reader task owns the socket's read half: it decodes frames, so the mailbox never blocks
//! on a read and an idle tracker can still be stopped, taken over or sent a command. The write
//! half is shared by the two behind an async mutex, so that each write goes out whole.
//!
//! The protocol's pure channel is shared by the two under a mutex that is never held across
//! an await. When the session has none of the connection's frames in hand, the reader runs a
//! read's frames through the channel itself, and when all they produce is events nothing
//! acknowledges (a GT06 location, say) it queues them on the publisher's queue and reads on:
//! the commonest read of a busy node costs no actor message and no wake-up of the session.
//! When the frames produce only events and replies (a JT/T 808 location report and its 0x8001,
//! a GT06 heartbeat and its ack), the reader queues the events, waits until they are durable
//! and then writes the replies itself, before it reads on: an acknowledged report costs no
//! actor message either. Any other outcome (a login, an instruction's answer, an
//! authentication check, events that cannot be queued without waiting) goes to the session as
//! one message with the channel's actions. While the session has frames or actions of the
//! reader in hand, later reads go to it as frames, so the channel always sees frames in
//! arrival order and never one whose predecessor's actions (an authentication check, say) are
//! still being carried out. The reader holds one permit of a small semaphore per message in
//! flight until the session has carried it out; that bounds the session's inbound queue even
//! though actor mailboxes themselves are unbounded, and "every permit back" is how the reader
//! knows the session has nothing of its in hand.
//!
//! Readers read into a buffer of their worker thread rather than one of their own: an idle
//! connection then holds no read buffer at all, and only the bytes of a frame cut in half by
//! the network are copied into the connection's own (usually empty) remainder.
//!
//! The session runs the channel's actions strictly in order. `Publish` is awaited before the
//! next action, so an acknowledgement the channel placed after it only reaches the device
//! once the event is durable: that is the "no acknowledged event is lost" invariant. The
//! reader keeps it by writing a read's replies only after all of the read's events are
//! durable.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use iothub::channel::{Action, Channel, CloseReason, RegistrationVerdict};
use iothub::command::{InstructCode, Instruction, InstructionReply};
use iothub::event::{
    jimi_time, Event, InstructResponseRecord, OfflineCommandCallback, OfflineCommandCallbackData,
    Record, Topic,
};
use iothub::imei::Imei;
use iothub::protocol::type_label;
use iothub::protocol::Protocol;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Mutex as AsyncMutex, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::AbortOnDropHandle;

use super::control::{InstructOutcome, NotAnswered, SessionControl, SessionRef};
use super::registrations::RegistrationLimiter;
use crate::auth_codes::{AuthCodes, Registration};
use crate::offline::{OfflineCommands, QueuedInstruction};
use crate::publish::{Durable, PublishError, Publisher, Unqueued};
use crate::registry::Registry;

/// Reads (each a batch of frames) a reader may have decoded and not yet seen handled.
const INBOUND_BATCHES_IN_FLIGHT: usize = 8;
/// Most bytes one read takes, and the most a connection may hold without completing a frame.
const MAX_READ_BUFFER: usize = 16 * 1024;
/// How often the channel gets a tick (idle, login and grace timeouts, subpackage resend
/// requests) from its gateway: they are enforced within this much of their setting. Each tick
/// is a message to every session, so a short period costs 19,000 messages a second on a full
/// node.
pub const TICK_PERIOD: Duration = Duration::from_secs(5);

/// Everything a session needs from the rest of the hub.
#[derive(Clone)]
pub struct SessionDeps {
    pub registry: Registry,
    pub publisher: Publisher,
    pub offline: OfflineCommands,
    pub auth_codes: AuthCodes,
    /// JT/T 808 registrations per source address.
    pub registrations: Arc<RegistrationLimiter>,
    pub write_timeout: Duration,
    /// How long a queued offline instruction may wait for the device's answer.
    pub offline_reply_timeout: Duration,
}

pub struct SessionArgs<P: Protocol> {
    pub protocol: Arc<P>,
    pub stream: TcpStream,
    /// Shared by every session of the node.
    pub deps: Arc<SessionDeps>,
    /// Connection-limit permit, released when the session's state is dropped.
    pub connection_permit: Option<OwnedSemaphorePermit>,
    /// The device's address: the connection's peer, or the one its PROXY header named.
    pub peer: std::net::SocketAddr,
}

pub enum SessionMsg<F> {
    /// What is left of one read for the session to do, with the permit that bounds the
    /// reader's run-ahead; the session holds the permit until it has done it.
    Inbound(Inbound<F>, OwnedSemaphorePermit),
    Tick,
    /// The reader stopped: end of stream, I/O error or undecodable bytes.
    ReaderDone(ReaderEnd),
    Control(SessionControl),
    /// The instruction with this generation got no answer in time.
    InstructionTimeout(u64),
}

impl<F> From<SessionControl> for SessionMsg<F> {
    fn from(c: SessionControl) -> Self {
        SessionMsg::Control(c)
    }
}

impl<F> TryFrom<SessionMsg<F>> for SessionControl {
    type Error = ();
    fn try_from(m: SessionMsg<F>) -> Result<Self, ()> {
        match m {
            SessionMsg::Control(c) => Ok(c),
            _ => Err(()),
        }
    }
}

/// One read's share of work for the session.
pub enum Inbound<F> {
    /// The frames, in order, not yet run through the channel: the session still had earlier
    /// ones in hand.
    Frames(Vec<F>),
    /// The channel's actions for the frames, which the reader ran itself.
    Actions(Vec<Action>),
    /// Events nothing acknowledges that the reader could not queue without waiting.
    Unqueued(Unqueued),
}

/// The protocol's channel as the session and its reader share it.
struct ChannelCell<C> {
    channel: C,
    /// The session is closing: it carries out no more actions and answers instructions as
    /// offline, and the reader runs no more frames through the channel. The one copy of
    /// this flag, so the two cannot disagree.
    closing: bool,
}

type SharedChannel<C> = Arc<Mutex<ChannelCell<C>>>;

/// The socket's write half as the session and its reader share it: a write holds the lock
/// until its last byte is out, so two writers never interleave their bytes.
type SharedWriter = Arc<AsyncMutex<OwnedWriteHalf>>;

/// The channel's methods do not panic, so a poisoned lock still holds a consistent channel.
fn lock<C>(shared: &SharedChannel<C>) -> MutexGuard<'_, ChannelCell<C>> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug)]
pub enum ReaderEnd {
    Eof,
    Io(std::io::Error),
    Decode {
        kind: &'static str,
        detail: String,
    },
    BufferOverflow,
    /// The events of a read the reader acknowledges itself could not be made durable: it
    /// wrote no reply, so the device sends them again.
    PublishFailed(PublishError),
    /// The reader's write of a reply failed or timed out.
    Write(WriteFailure),
}

#[derive(Debug)]
pub enum WriteFailure {
    Io(std::io::Error),
    TimedOut,
}

impl WriteFailure {
    fn label(&self) -> &'static str {
        match self {
            WriteFailure::Io(_) => "write_failed",
            WriteFailure::TimedOut => "write_timeout",
        }
    }
}

/// Writes all of `bytes`, waiting for the other writer (see [`SharedWriter`]) within the same
/// time limit.
async fn write_to(
    writer: &SharedWriter,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), WriteFailure> {
    let write = async { writer.lock().await.write_all(bytes).await };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(WriteFailure::Io(e)),
        Err(_) => Err(WriteFailure::TimedOut),
    }
}

/// Logs why a write failed; the caller closes the connection with the failure's label.
fn log_write_failure(imei: Option<Imei>, failure: &WriteFailure) {
    match failure {
        WriteFailure::Io(e) => tracing::debug!(?imei, error = %e, "write failed"),
        WriteFailure::TimedOut => tracing::info!(?imei, "write timed out, closing slow connection"),
    }
}

/// Who is waiting for the answer to the instruction in flight.
enum Waiter {
    /// A sendInstruct caller.
    Api(oneshot::Sender<InstructOutcome>),
    /// An offline instruction delivered at login.
    Offline(QueuedInstruction),
}

struct InFlight {
    generation: u64,
    server_flag_id: u32,
    waiter: Waiter,
}

pub struct SessionState<P: Protocol> {
    protocol: Arc<P>,
    channel: SharedChannel<P::Channel>,
    writer: SharedWriter,
    /// Aborted with the state: ractor skips `post_stop` after a panic in `handle` but still
    /// drops the state, and a reader outliving its session would go on acknowledging.
    reader: AbortOnDropHandle<()>,
    deps: Arc<SessionDeps>,
    imei: Option<Imei>,
    /// Boxed: most sessions have none most of the time, and it is 80 bytes.
    in_flight: Option<Box<InFlight>>,
    generation: u64,
    /// Offline instructions still to deliver this connection, oldest first.
    offline_queue: VecDeque<QueuedInstruction>,
    /// A newer connection of the device took over: its LOGIN is already out, so this one
    /// must not publish a LOGOUT that would arrive after it and mark the device offline.
    taken_over: bool,
    /// The device's offline instructions could not be read at login (store unreachable):
    /// read them again at the next tick, so none waits for the next login.
    offline_unread: bool,
    /// The protocol the first frame showed (`gt06`, `jt808`; the gateway's name before it),
    /// for the frame, decode-error and unrecognised-type metric labels.
    detected: &'static str,
    /// The device's address (from its PROXY header behind a balancer that sends one): the
    /// login log line and the per-source registration limit.
    peer: std::net::IpAddr,
    _connection_permit: Option<OwnedSemaphorePermit>,
}

pub struct DeviceSession<P: Protocol>(std::marker::PhantomData<P>);

impl<P: Protocol> Default for DeviceSession<P> {
    fn default() -> Self {
        DeviceSession(std::marker::PhantomData)
    }
}

impl<P: Protocol> Actor for DeviceSession<P> {
    type Msg = SessionMsg<P::Frame>;
    type State = SessionState<P>;
    type Arguments = SessionArgs<P>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SessionArgs<P>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let _ = args.stream.set_nodelay(true);
        let peer = args.peer.ip();
        tracing::debug!(protocol = args.protocol.name(), peer = %args.peer, "device connected");
        let (read_half, writer) = args.stream.into_split();
        let writer = Arc::new(AsyncMutex::new(writer));
        let channel = Arc::new(Mutex::new(ChannelCell {
            channel: args.protocol.new_channel(Utc::now()),
            closing: false,
        }));
        let reader = AbortOnDropHandle::new(tokio::spawn(read_loop(
            Reader {
                protocol: args.protocol.clone(),
                channel: channel.clone(),
                writer: writer.clone(),
                deps: args.deps.clone(),
                session: myself,
            },
            read_half,
        )));
        metrics::gauge!("iothub_connections", "protocol" => args.protocol.name()).increment(1.0);
        let detected = args.protocol.name();
        Ok(SessionState {
            protocol: args.protocol,
            channel,
            writer,
            reader,
            deps: args.deps,
            imei: None,
            in_flight: None,
            generation: 0,
            offline_queue: VecDeque::new(),
            taken_over: false,
            offline_unread: false,
            detected,
            peer,
            _connection_permit: args.connection_permit,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // The handling future (publishing, writing, registering, offline delivery) is several
        // kilobytes; an actor's task keeps room for its largest state for as long as the
        // actor lives. Boxing it means an idle session holds none of that memory, at the
        // price of an allocation and a copy of the future per message. The commonest read,
        // of locations nothing acknowledges, never reaches the session (see the module docs).
        let handling: BoxedHandling<'_> = Box::pin(handle_message(myself, msg, state));
        handling.await;
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.reader.abort();
        // Under the lock the reader queues its events in, so a location it ran goes before
        // the logout, and none comes after it.
        let actions = {
            let mut cell = lock(&state.channel);
            cell.closing = true;
            cell.channel.handle_close(Utc::now())
        };
        let events = events_of(actions);
        if !events.is_empty() && !state.taken_over {
            if let Err(e) = state.deps.publisher.publish(events).await {
                tracing::warn!(imei = ?state.imei, error = %e, "logout event not stored");
            }
        }
        if let Some(in_flight) = state.in_flight.take() {
            if let Waiter::Api(reply) = in_flight.waiter {
                let _ = reply.send(Err(InstructCode::Offline.into()));
            }
        }
        if let Some(imei) = state.imei {
            state.deps.registry.unregister(imei, myself.get_id());
        }
        // The reader, aborted above, may still hold the writer for as long as its write's
        // time limit.
        let _ = state.writer.lock().await.shutdown().await;
        metrics::gauge!("iothub_connections", "protocol" => state.protocol.name()).decrement(1.0);
        Ok(())
    }
}

/// A message's handling, boxed (see `DeviceSession::handle`).
type BoxedHandling<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// What `DeviceSession::handle` does, as a future of its own (see there).
async fn handle_message<P: Protocol>(
    myself: ActorRef<SessionMsg<P::Frame>>,
    msg: SessionMsg<P::Frame>,
    state: &mut SessionState<P>,
) {
    if state.closing() {
        // Answer callers rather than leave them waiting on a closing session.
        match msg {
            SessionMsg::Control(SessionControl::Instruct { reply, .. }) => {
                let _ = reply.send(Err(InstructCode::Offline.into()));
            }
            SessionMsg::Control(SessionControl::Signal { reply, .. }) => {
                let _ = reply.send(Err(InstructCode::Offline.into()));
            }
            _ => {}
        }
        return;
    }
    match msg {
        SessionMsg::Inbound(inbound, permit) => {
            match inbound {
                Inbound::Frames(frames) => {
                    let actions =
                        run_frames(&*state.protocol, &mut lock(&state.channel).channel, frames);
                    state.run(&myself, actions).await;
                }
                Inbound::Actions(actions) => state.run(&myself, actions).await,
                Inbound::Unqueued(unqueued) => state.publish_unqueued(&myself, unqueued).await,
            }
            // Only now may the reader run frames through the channel again.
            drop(permit);
        }
        SessionMsg::Tick => {
            let actions = lock(&state.channel).channel.handle_tick(Utc::now());
            state.run(&myself, actions).await;
            if state.offline_unread {
                let actions = state.read_offline(&myself).await;
                state.run(&myself, actions).await;
            }
        }
        SessionMsg::ReaderDone(end) => {
            match &end {
                ReaderEnd::Eof => {}
                ReaderEnd::Io(e) => {
                    tracing::debug!(imei = ?state.imei, error = %e, "read failed")
                }
                ReaderEnd::Decode { kind, detail } => {
                    metrics::counter!(
                        "iothub_decode_errors_total",
                        "protocol" => state.detected,
                        "kind" => *kind
                    )
                    .increment(1);
                    tracing::warn!(imei = ?state.imei, kind, detail, "malformed frame, closing connection");
                }
                ReaderEnd::BufferOverflow => {
                    metrics::counter!(
                        "iothub_decode_errors_total",
                        "protocol" => state.detected,
                        "kind" => "buffer_overflow"
                    )
                    .increment(1);
                }
                ReaderEnd::PublishFailed(e) => {
                    tracing::error!(imei = ?state.imei, error = %e, "event not stored, closing without ack")
                }
                ReaderEnd::Write(failure) => log_write_failure(state.imei, failure),
            }
            state.close(&myself, reader_end_label(&end));
        }
        SessionMsg::Control(SessionControl::TakenOver) => {
            tracing::info!(imei = ?state.imei, "newer connection of this device logged in, closing");
            state.taken_over = true;
            state.close(&myself, "taken_over");
        }
        SessionMsg::Control(SessionControl::Instruct {
            instruction,
            timeout,
            reply,
        }) => {
            let actions = state
                .start_instruction(&myself, instruction, timeout, Waiter::Api(reply))
                .await;
            state.run(&myself, actions).await;
        }
        SessionMsg::Control(SessionControl::Signal { build, reply }) => {
            let local = state.writer.lock().await.local_addr().ok();
            let instruction = build(local);
            let sent = lock(&state.channel)
                .channel
                .handle_signal(&instruction, Utc::now());
            match sent {
                Ok(actions) => {
                    let _ = reply.send(Ok(()));
                    state.run(&myself, actions).await;
                }
                Err(refusal) => {
                    let _ = reply.send(Err(NotAnswered {
                        code: refusal.code(),
                        detail: Some(refusal.to_string()),
                    }));
                }
            }
        }
        SessionMsg::InstructionTimeout(generation) => {
            let actions = state.expire_instruction(&myself, generation).await;
            state.run(&myself, actions).await;
        }
    }
}

/// The events the actions publish, in order; the other actions are dropped.
fn events_of(actions: Vec<Action>) -> Vec<Event> {
    actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Publish(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Passes the frames of one read through the channel. One run for the whole read: the events
/// of its frames go out as one publish.
fn run_frames<P: Protocol>(
    protocol: &P,
    channel: &mut P::Channel,
    frames: Vec<P::Frame>,
) -> Vec<Action> {
    let now = Utc::now();
    let mut actions = Vec::new();
    for frame in frames {
        let (protocol, frame_type) = protocol.frame_label(&frame);
        count_frame(protocol, frame_type);
        let produced = channel.handle_frame(frame, now);
        // Most reads are one frame: its actions are the read's, with no copy.
        if actions.is_empty() {
            actions = produced;
        } else {
            actions.extend(produced);
        }
    }
    actions
}

thread_local! {
    /// This thread's `iothub_frames_total` handles by their (protocol, type) labels. Counting
    /// through `metrics::counter!` builds and hashes the labelled key and looks it up in the
    /// registry on every frame; a held handle is one atomic add. A handle counts into the
    /// recorder that was installed when it was made: iothubd installs its recorder before it
    /// starts any listener, so that is always the node's.
    static FRAME_COUNTERS: RefCell<HashMap<FrameLabel, metrics::Counter>> =
        RefCell::new(HashMap::new());
}

/// A frame's (protocol, type) labels by address and length: they are static strings from a
/// bounded set, so this identifies them without hashing their text.
type FrameLabel = (usize, usize, usize, usize);

/// Adds one to `iothub_frames_total{protocol, type}`.
fn count_frame(protocol: &'static str, frame_type: &'static str) {
    let label = (
        protocol.as_ptr() as usize,
        protocol.len(),
        frame_type.as_ptr() as usize,
        frame_type.len(),
    );
    FRAME_COUNTERS.with_borrow_mut(|counters| {
        counters
            .entry(label)
            .or_insert_with(|| {
                metrics::counter!(
                    "iothub_frames_total",
                    "protocol" => protocol,
                    "type" => frame_type
                )
            })
            .increment(1);
    });
}

impl<P: Protocol> SessionState<P> {
    /// The session decided to close (or is stopping); kept in the shared cell, where the
    /// reader reads it too.
    fn closing(&self) -> bool {
        lock(&self.channel).closing
    }

    /// Finishes a publish of unacknowledged events that could not be queued at once.
    async fn publish_unqueued(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        unqueued: Unqueued,
    ) {
        if let Err(e) = self.deps.publisher.finish_unqueued(unqueued).await {
            tracing::error!(imei = ?self.imei, error = %e, "event not stored, closing");
            self.close(myself, "publish_failed");
        }
    }

    /// Carries out the channel's actions in order; consecutive publishes go as one batch.
    /// Actions produced while carrying out an action (an offline instruction sent at login)
    /// run after the rest, so a device sees its login acknowledged before any instruction.
    async fn run(&mut self, myself: &ActorRef<SessionMsg<P::Frame>>, actions: Vec<Action>) {
        let mut queue: VecDeque<Action> = actions.into();
        let mut pending_events: Vec<Event> = Vec::new();
        while let Some(action) = queue.pop_front() {
            if self.closing() {
                return;
            }
            if let Action::Publish(event) = action {
                pending_events.push(event);
                continue;
            }
            if !pending_events.is_empty() && !self.flush_events(myself, &mut pending_events).await {
                return;
            }
            let follow_up = match action {
                Action::Publish(_) => Vec::new(),
                Action::Send(bytes) => {
                    self.write(myself, &bytes).await;
                    Vec::new()
                }
                Action::LoggedIn { imei } => self.logged_in(myself, imei).await,
                Action::InstructionReply(reply) => self.instruction_reply(myself, reply).await,
                Action::Unrecognised { protocol } => {
                    metrics::counter!(
                        "iothub_frames_unrecognised_total",
                        "protocol" => self.detected,
                        "type" => type_label(self.detected, protocol)
                    )
                    .increment(1);
                    tracing::debug!(imei = ?self.imei, message_type = protocol, "message type not handled");
                    Vec::new()
                }
                Action::ProtocolDetected { protocol } => {
                    self.detected = protocol;
                    metrics::counter!(
                        "iothub_protocol_detected_total",
                        "gateway" => self.protocol.name(),
                        "protocol" => protocol
                    )
                    .increment(1);
                    Vec::new()
                }
                Action::StoreAuthCode { imei, code } => {
                    if let Err(e) = self.deps.auth_codes.store(imei, code).await {
                        tracing::error!(%imei, error = %e, "authentication code not stored, closing");
                        self.close(myself, "store_failed");
                    }
                    Vec::new()
                }
                Action::VerifyAuthCode { check, imei, code } => {
                    let verdict = self.deps.auth_codes.verify(imei, &code).await;
                    metrics::counter!(
                        "iothub_auth_checks_total",
                        "verdict" => verdict_label(verdict)
                    )
                    .increment(1);
                    // The verdict's actions come before anything queued after the check.
                    let then =
                        lock(&self.channel)
                            .channel
                            .handle_auth_verdict(check, verdict, Utc::now());
                    for action in then.into_iter().rev() {
                        queue.push_front(action);
                    }
                    Vec::new()
                }
                Action::RegisterTerminal {
                    check,
                    imei,
                    code,
                    replace,
                } => {
                    let verdict = self.register_terminal(imei, code, replace).await;
                    metrics::counter!(
                        "iothub_jt808_registrations_total",
                        "result" => registration_label(verdict)
                    )
                    .increment(1);
                    let then = lock(&self.channel).channel.handle_registration_verdict(
                        check,
                        verdict,
                        Utc::now(),
                    );
                    for action in then.into_iter().rev() {
                        queue.push_front(action);
                    }
                    Vec::new()
                }
                Action::Close(reason) => {
                    if reason == CloseReason::NotLoggedIn {
                        tracing::info!("frame before login, closing connection");
                    }
                    self.close(myself, reason.label());
                    Vec::new()
                }
            };
            queue.extend(follow_up);
        }
        if !pending_events.is_empty() {
            // Nothing after these events tells the device anything, so the session need not
            // wait for them to be durable before the next message: the publisher's queue keeps
            // them ahead of anything the session publishes later.
            let events = std::mem::take(&mut pending_events);
            if let Err(unqueued) = self.deps.publisher.try_publish_unacknowledged(events) {
                self.publish_unqueued(myself, unqueued).await;
            }
        }
    }

    /// Applies the per-source limit, then stores a registration's code as the policy says.
    async fn register_terminal(
        &mut self,
        imei: Imei,
        code: String,
        replace: bool,
    ) -> RegistrationVerdict {
        let source = self.peer;
        let minute = u64::try_from(Utc::now().timestamp() / 60).unwrap_or(0);
        if !self.deps.registrations.allow(source, minute) {
            tracing::info!(%imei, %source, "registration refused: source over its registration rate");
            return RegistrationVerdict::RateLimited;
        }
        match self.deps.auth_codes.register(imei, code, replace).await {
            Ok(Registration::Registered) => RegistrationVerdict::Registered,
            Ok(Registration::AlreadyRegistered) => {
                tracing::info!(%imei, "registration refused: terminal already holds a code");
                RegistrationVerdict::AlreadyRegistered
            }
            Err(e) => {
                tracing::error!(%imei, error = %e, "authentication code not stored, closing");
                RegistrationVerdict::Unavailable
            }
        }
    }

    /// Publishes and waits until durable. On failure the connection closes without the
    /// acknowledgement that would have followed, so the device sends the data again.
    async fn flush_events(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        events: &mut Vec<Event>,
    ) -> bool {
        match self.deps.publisher.publish(std::mem::take(events)).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(imei = ?self.imei, error = %e, "event not stored, closing without ack");
                self.close(myself, "publish_failed");
                false
            }
        }
    }

    async fn write(&mut self, myself: &ActorRef<SessionMsg<P::Frame>>, bytes: &[u8]) {
        if let Err(failure) = write_to(&self.writer, bytes, self.deps.write_timeout).await {
            log_write_failure(self.imei, &failure);
            self.close(myself, failure.label());
        }
    }

    async fn logged_in(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        imei: Imei,
    ) -> Vec<Action> {
        if self.imei == Some(imei) {
            return Vec::new();
        }
        self.imei = Some(imei);
        let me = SessionRef {
            id: myself.get_id(),
            control: myself.get_derived(),
        };
        if self.deps.registry.register(imei, me).await.is_err() {
            self.close(myself, "registry_down");
            return Vec::new();
        }
        metrics::counter!("iothub_logins_total", "protocol" => self.protocol.name()).increment(1);
        tracing::info!(%imei, peer = %self.peer, protocol = self.detected, "device logged in");
        self.read_offline(myself).await
    }

    /// Reads the device's queued offline instructions and starts delivering them; on a store
    /// failure, marks them for another read at the next tick.
    async fn read_offline(&mut self, myself: &ActorRef<SessionMsg<P::Frame>>) -> Vec<Action> {
        let Some(imei) = self.imei else {
            return Vec::new();
        };
        match self.deps.offline.pending(imei).await {
            Ok(queued) => {
                self.offline_unread = false;
                // A retry may find instructions this connection is already delivering.
                let known: Vec<u64> = self.offline_queue.iter().map(|q| q.id).collect();
                let in_flight = match self.in_flight.as_deref() {
                    Some(InFlight {
                        waiter: Waiter::Offline(q),
                        ..
                    }) => Some(q.id),
                    _ => None,
                };
                self.offline_queue.extend(
                    queued
                        .into_iter()
                        .filter(|q| !known.contains(&q.id) && Some(q.id) != in_flight),
                );
                self.deliver_next_offline(myself).await
            }
            Err(e) => {
                tracing::warn!(%imei, error = %e, "could not read offline instructions; retrying at the next tick");
                metrics::counter!("iothub_offline_read_failures_total").increment(1);
                self.offline_unread = true;
                Vec::new()
            }
        }
    }

    /// Starts the next queued offline instruction if none is in flight; returns the actions
    /// that put it on the wire.
    async fn deliver_next_offline(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
    ) -> Vec<Action> {
        while self.in_flight.is_none() && !self.closing() {
            let Some(queued) = self.offline_queue.pop_front() else {
                break;
            };
            let instruction = queued.instruction.clone();
            let timeout = self.deps.offline_reply_timeout;
            let actions = self
                .start_instruction(myself, instruction, timeout, Waiter::Offline(queued))
                .await;
            if !actions.is_empty() {
                return actions;
            }
        }
        Vec::new()
    }

    async fn start_instruction(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        instruction: Instruction,
        timeout: Duration,
        waiter: Waiter,
    ) -> Vec<Action> {
        if self.in_flight.is_some() {
            match waiter {
                Waiter::Api(reply) => {
                    let _ = reply.send(Err(InstructCode::Busy.into()));
                }
                // Delivered after the instruction in flight is answered or expires.
                Waiter::Offline(queued) => self.offline_queue.push_front(queued),
            }
            return Vec::new();
        }
        let sent = lock(&self.channel)
            .channel
            .handle_instruction(&instruction, Utc::now());
        match sent {
            Err(refusal) => {
                match waiter {
                    Waiter::Api(reply) => {
                        let _ = reply.send(Err(NotAnswered {
                            code: refusal.code(),
                            detail: Some(refusal.to_string()),
                        }));
                    }
                    Waiter::Offline(queued) => {
                        // It can never be delivered: answer the customer and drop it.
                        tracing::warn!(imei = ?self.imei, error = %refusal, "offline instruction refused by the device protocol");
                        self.finish_offline(myself, queued, refusal.code(), String::new())
                            .await;
                    }
                }
                Vec::new()
            }
            Ok(actions) => {
                self.generation += 1;
                let generation = self.generation;
                self.in_flight = Some(Box::new(InFlight {
                    generation,
                    server_flag_id: instruction.server_flag_id,
                    waiter,
                }));
                let me = myself.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(timeout).await;
                    let _ = me.cast(SessionMsg::InstructionTimeout(generation));
                });
                metrics::counter!("iothub_instructions_sent_total", "protocol" => self.protocol.name())
                    .increment(1);
                actions
            }
        }
    }

    async fn instruction_reply(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        reply: InstructionReply,
    ) -> Vec<Action> {
        let matches = self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.server_flag_id == reply.server_flag_id);
        if !matches {
            tracing::info!(imei = ?self.imei, flag = reply.server_flag_id, content = %reply.content, "device reply matches no instruction in flight");
            metrics::counter!("iothub_instruction_replies_unmatched_total").increment(1);
            return Vec::new();
        }
        let Some(in_flight) = self.in_flight.take() else {
            return Vec::new();
        };
        match in_flight.waiter {
            Waiter::Api(tx) => {
                let _ = tx.send(Ok(reply));
            }
            Waiter::Offline(queued) => {
                self.finish_offline(myself, queued, InstructCode::Ok, reply.content)
                    .await;
            }
        }
        self.deliver_next_offline(myself).await
    }

    async fn expire_instruction(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        generation: u64,
    ) -> Vec<Action> {
        if self.in_flight.as_ref().map(|f| f.generation) != Some(generation) {
            return Vec::new();
        }
        let Some(in_flight) = self.in_flight.take() else {
            return Vec::new();
        };
        lock(&self.channel)
            .channel
            .instruction_expired(in_flight.server_flag_id);
        metrics::counter!("iothub_instruction_timeouts_total").increment(1);
        match in_flight.waiter {
            Waiter::Api(tx) => {
                let _ = tx.send(Err(InstructCode::Timeout.into()));
            }
            Waiter::Offline(queued) => {
                // Stays queued for the next login; do not retry it on this connection, where
                // the device already ignored it once.
                tracing::info!(imei = %queued.imei, id = queued.id, "offline instruction unanswered, kept for next login");
            }
        }
        self.deliver_next_offline(myself).await
    }

    /// The device answered (or can never answer) an offline instruction: push the result to
    /// the customer through the durable log, then drop it from the queue.
    async fn finish_offline(
        &mut self,
        myself: &ActorRef<SessionMsg<P::Frame>>,
        queued: QueuedInstruction,
        code: InstructCode,
        content: String,
    ) {
        let gate_time = jimi_time(Utc::now());
        let flag = u64::from(queued.instruction.server_flag_id);
        let events = vec![
            Event {
                topic: Topic::InstructResponse,
                imei: queued.imei,
                record: Record::InstructResponse(InstructResponseRecord {
                    code: code.code().to_string(),
                    msg: code.message().to_string(),
                    imei: queued.imei,
                    pro_no: queued.instruction.pro_no,
                    content: content.clone(),
                    server_flag_id: flag,
                    gate_time,
                }),
            },
            Event {
                topic: Topic::OfflineCommandCallback,
                imei: queued.imei,
                record: Record::OfflineCommandCallback(OfflineCommandCallback {
                    code: 0,
                    msg: "success".to_string(),
                    data: OfflineCommandCallbackData {
                        code: code.code().to_string(),
                        imei: queued.imei,
                        content,
                        msg: code.message().to_string(),
                        server_flag_id: flag,
                    },
                }),
            },
        ];
        let mut events = events;
        if self.flush_events(myself, &mut events).await {
            if let Err(e) = self.deps.offline.remove(queued.imei, queued.id).await {
                tracing::warn!(imei = %queued.imei, error = %e, "could not remove answered offline instruction");
            }
        }
    }

    fn close(&mut self, myself: &ActorRef<SessionMsg<P::Frame>>, reason: &'static str) {
        {
            let mut cell = lock(&self.channel);
            if cell.closing {
                return;
            }
            cell.closing = true;
        }
        metrics::counter!(
            "iothub_sessions_closed_total",
            "protocol" => self.protocol.name(),
            "reason" => reason
        )
        .increment(1);
        myself.stop(Some(reason.to_string()));
    }
}

fn reader_end_label(end: &ReaderEnd) -> &'static str {
    match end {
        ReaderEnd::Eof => "eof",
        ReaderEnd::Io(_) => "io_error",
        ReaderEnd::Decode { .. } => "malformed_frame",
        ReaderEnd::BufferOverflow => "buffer_overflow",
        ReaderEnd::PublishFailed(_) => "publish_failed",
        ReaderEnd::Write(failure) => failure.label(),
    }
}

fn registration_label(v: RegistrationVerdict) -> &'static str {
    match v {
        RegistrationVerdict::Registered => "registered",
        RegistrationVerdict::AlreadyRegistered => "already_registered",
        RegistrationVerdict::RateLimited => "rate_limited",
        RegistrationVerdict::Unavailable => "store_failed",
    }
}

fn verdict_label(v: iothub::channel::AuthVerdict) -> &'static str {
    use iothub::channel::AuthVerdict;
    match v {
        AuthVerdict::Match => "match",
        AuthVerdict::Mismatch => "mismatch",
        AuthVerdict::Unknown => "unknown",
        AuthVerdict::Unavailable => "unavailable",
    }
}

thread_local! {
    /// The read buffer every reader on this worker thread shares (see the module docs).
    static READ_SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ_BUFFER].into_boxed_slice());
}

/// What the reader task holds besides the socket's read half.
struct Reader<P: Protocol> {
    protocol: Arc<P>,
    channel: SharedChannel<P::Channel>,
    writer: SharedWriter,
    deps: Arc<SessionDeps>,
    session: ActorRef<SessionMsg<P::Frame>>,
}

/// What is left of a read the reader ran through the channel.
enum ReadWork<F> {
    /// Nothing: its events are queued, or the session is closing.
    Done,
    /// Write `replies` once the events are durable (none if the read produced no event).
    Acknowledge {
        durable: Option<Durable>,
        replies: Vec<Vec<u8>>,
    },
    /// The session's to do.
    Session(Inbound<F>),
}

/// Reads and decodes frames until the stream ends or fails; runs them through the channel or
/// hands them to the session (see the module docs).
async fn read_loop<P: Protocol>(reader: Reader<P>, mut read_half: OwnedReadHalf) {
    let credits = Arc::new(Semaphore::new(INBOUND_BATCHES_IN_FLIGHT));
    // The start of a frame whose end has not arrived yet; empty (and unallocated) nearly always.
    let mut remainder: Vec<u8> = Vec::new();
    let end = loop {
        let read = read_frames(&*reader.protocol, &mut read_half, &mut remainder).await;
        if !read.frames.is_empty() {
            let work = if credits.available_permits() == INBOUND_BATCHES_IN_FLIGHT {
                reader.run(read.frames)
            } else {
                ReadWork::Session(Inbound::Frames(read.frames))
            };
            match work {
                ReadWork::Done => {}
                ReadWork::Acknowledge { durable, replies } => {
                    // Boxed: the wait and the write would otherwise make every idle reader's
                    // task as large as they are (see `DeviceSession::handle`).
                    let acknowledged: BoxedAcknowledgement<'_> =
                        Box::pin(reader.acknowledge(durable, replies));
                    if let Err(end) = acknowledged.await {
                        break end;
                    }
                }
                ReadWork::Session(inbound) => {
                    let Ok(permit) = credits.clone().acquire_owned().await else {
                        return;
                    };
                    if reader
                        .session
                        .cast(SessionMsg::Inbound(inbound, permit))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        if let Some(end) = read.end {
            break end;
        }
    };
    let _ = reader.session.cast(SessionMsg::ReaderDone(end));
}

/// The reader's acknowledgement of a read, boxed (see `read_loop`).
type BoxedAcknowledgement<'a> = Pin<Box<dyn Future<Output = Result<(), ReaderEnd>> + Send + 'a>>;

impl<P: Protocol> Reader<P> {
    /// Runs a read's frames through the channel (the session has none in hand). Queues the
    /// events if they are all the frames produced; if there are replies too, queues the
    /// events to be awaited before the replies are written. Anything else is the session's.
    fn run(&self, frames: Vec<P::Frame>) -> ReadWork<P::Frame> {
        let mut cell = lock(&self.channel);
        if cell.closing {
            return ReadWork::Done;
        }
        let actions = run_frames(&*self.protocol, &mut cell.channel, frames);
        // The events are queued with the lock held, so that the session's logout (see
        // `post_stop`) cannot be queued between this read's channel run and its events.
        if actions.iter().all(|a| matches!(a, Action::Publish(_))) {
            return match self
                .deps
                .publisher
                .try_publish_unacknowledged(events_of(actions))
            {
                Ok(()) => ReadWork::Done,
                Err(unqueued) => ReadWork::Session(Inbound::Unqueued(unqueued)),
            };
        }
        if !actions
            .iter()
            .all(|a| matches!(a, Action::Publish(_) | Action::Send(_)))
        {
            return ReadWork::Session(Inbound::Actions(actions));
        }
        // Every reply waits for every event of the read: the channel puts an event before
        // the acknowledgement that answers it, and no reply of a protocol needs to overtake
        // a durable write.
        let mut events = Vec::with_capacity(actions.len());
        let mut replies = Vec::with_capacity(1);
        for action in actions {
            match action {
                Action::Publish(event) => events.push(event),
                Action::Send(bytes) => replies.push(bytes),
                // None left: checked above.
                _ => {}
            }
        }
        if events.is_empty() {
            return ReadWork::Acknowledge {
                durable: None,
                replies,
            };
        }
        match self.deps.publisher.try_publish(events) {
            Ok(durable) => ReadWork::Acknowledge {
                durable: Some(durable),
                replies,
            },
            // The queue is full: the session waits for room, then acknowledges.
            Err(events) => ReadWork::Session(Inbound::Actions(
                events
                    .into_iter()
                    .map(Action::Publish)
                    .chain(replies.into_iter().map(Action::Send))
                    .collect(),
            )),
        }
    }

    /// Waits until the read's events are durable, then writes its replies. On failure the
    /// connection is closed by the session; a reply is never written for an event that is
    /// not durable.
    async fn acknowledge(
        &self,
        durable: Option<Durable>,
        replies: Vec<Vec<u8>>,
    ) -> Result<(), ReaderEnd> {
        if let Some(durable) = durable {
            durable.wait().await.map_err(ReaderEnd::PublishFailed)?;
        }
        for reply in &replies {
            write_to(&self.writer, reply, self.deps.write_timeout)
                .await
                .map_err(ReaderEnd::Write)?;
        }
        Ok(())
    }
}

/// What one read produced: its whole frames, in order, and why reading must stop, if it must.
/// Frames cut before an undecodable byte still go to the session.
struct ReadOutcome<F> {
    frames: Vec<F>,
    end: Option<ReaderEnd>,
}

impl<F> ReadOutcome<F> {
    fn ended(end: ReaderEnd) -> Self {
        ReadOutcome {
            frames: Vec::new(),
            end: Some(end),
        }
    }
}

/// Waits for bytes, reads them into the thread's buffer and cuts every whole frame. Bytes of
/// an unfinished frame stay in `remainder`.
async fn read_frames<P: Protocol>(
    protocol: &P,
    read_half: &mut OwnedReadHalf,
    remainder: &mut Vec<u8>,
) -> ReadOutcome<P::Frame> {
    std::future::poll_fn(|cx| {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            // poll_read, unlike try_read, marks the socket drained after a short read, which
            // saves the second recv per frame that would only answer "would block".
            match Pin::new(&mut *read_half).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => Poll::Ready(ReadOutcome::ended(ReaderEnd::Io(e))),
                Poll::Ready(Ok(())) if read.filled().is_empty() => {
                    Poll::Ready(ReadOutcome::ended(ReaderEnd::Eof))
                }
                Poll::Ready(Ok(())) => Poll::Ready(cut_frames(protocol, remainder, read.filled())),
            }
        })
    })
    .await
}

/// Cuts the frames of `fresh` (after whatever `remainder` held) and keeps the unfinished end
/// in `remainder`.
fn cut_frames<P: Protocol>(
    protocol: &P,
    remainder: &mut Vec<u8>,
    fresh: &[u8],
) -> ReadOutcome<P::Frame> {
    let mut outcome = if remainder.is_empty() {
        let (outcome, used) = cut_from(protocol, fresh);
        remainder.extend_from_slice(&fresh[used..]);
        outcome
    } else {
        remainder.extend_from_slice(fresh);
        let (outcome, used) = cut_from(protocol, remainder);
        remainder.drain(..used);
        if remainder.is_empty() {
            // Partial frames are rare: give the memory back rather than keep it per connection.
            *remainder = Vec::new();
        }
        outcome
    };
    if outcome.end.is_none() && remainder.len() > MAX_READ_BUFFER {
        outcome.end = Some(ReaderEnd::BufferOverflow);
    }
    outcome
}

/// Decodes frames from the front of `buf`; returns them and how many bytes they used.
fn cut_from<P: Protocol>(protocol: &P, buf: &[u8]) -> (ReadOutcome<P::Frame>, usize) {
    let mut frames = Vec::new();
    let mut used = 0;
    loop {
        match protocol.decode(&buf[used..]) {
            Ok(Some(cut)) => {
                if cut.skipped > 0 {
                    metrics::counter!("iothub_garbage_bytes_total", "protocol" => protocol.name())
                        .increment(cut.skipped as u64);
                }
                if cut.checksum_failed {
                    metrics::counter!("iothub_checksum_mismatches_total", "protocol" => protocol.name())
                        .increment(1);
                }
                used = (used + cut.consumed.max(1)).min(buf.len());
                frames.push(cut.frame);
            }
            Ok(None) => return (ReadOutcome { frames, end: None }, used),
            Err(f) => {
                let end = ReaderEnd::Decode {
                    kind: f.kind,
                    detail: f.detail,
                };
                return (
                    ReadOutcome {
                        frames,
                        end: Some(end),
                    },
                    used,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use iothub::codec::CrcPolicy;
    use iothub::protocol::Gt06Protocol;

    use super::*;

    /// GT06 login (IMEI 0864717003283581) and heartbeat frames of the reference.
    const LOGIN: &str = "78780d01086471700328358100093f040d0a";
    const HEARTBEAT: &str = "78780a13440604000201baaf540d0a";

    fn gt06() -> Gt06Protocol {
        Gt06Protocol::new(
            CrcPolicy::Reject,
            Duration::from_secs(180),
            Duration::from_secs(60),
        )
    }

    fn bytes(frames: &[&str]) -> Vec<u8> {
        frames
            .iter()
            .flat_map(|f| hex::decode(f).unwrap())
            .collect()
    }

    fn protocols(outcome: &ReadOutcome<iothub::codec::gt06::Frame>) -> Vec<u8> {
        outcome.frames.iter().map(|f| f.protocol).collect()
    }

    #[test]
    fn frames_of_one_read_come_out_together_in_order() {
        let mut remainder = Vec::new();
        let outcome = cut_frames(&gt06(), &mut remainder, &bytes(&[LOGIN, HEARTBEAT]));
        assert_eq!(protocols(&outcome), vec![0x01, 0x13]);
    }

    #[test]
    fn a_read_of_whole_frames_leaves_no_remainder() {
        let mut remainder = Vec::new();
        let _ = cut_frames(&gt06(), &mut remainder, &bytes(&[LOGIN, HEARTBEAT]));
        assert_eq!(remainder.capacity(), 0);
    }

    #[test]
    fn a_frame_cut_by_the_network_waits_in_the_remainder() {
        let wire = bytes(&[LOGIN, HEARTBEAT]);
        let mut remainder = Vec::new();
        let first = cut_frames(&gt06(), &mut remainder, &wire[..25]);
        assert_eq!(protocols(&first), vec![0x01]);
        assert_eq!(remainder, wire[18..25]);
    }

    #[test]
    fn the_rest_of_a_cut_frame_completes_it() {
        let wire = bytes(&[LOGIN, HEARTBEAT]);
        let mut remainder = Vec::new();
        let _ = cut_frames(&gt06(), &mut remainder, &wire[..25]);
        let second = cut_frames(&gt06(), &mut remainder, &wire[25..]);
        assert_eq!(protocols(&second), vec![0x13]);
    }

    #[test]
    fn a_used_up_remainder_gives_its_memory_back() {
        let wire = bytes(&[LOGIN, HEARTBEAT]);
        let mut remainder = Vec::new();
        let _ = cut_frames(&gt06(), &mut remainder, &wire[..25]);
        let _ = cut_frames(&gt06(), &mut remainder, &wire[25..]);
        assert_eq!(remainder.capacity(), 0);
    }

    #[test]
    fn frames_before_undecodable_bytes_still_reach_the_session() {
        let mut wire = bytes(&[LOGIN]);
        // More bytes without a start marker than the codec skips as garbage.
        wire.extend_from_slice(&[0u8; 100]);
        let mut remainder = Vec::new();
        let outcome = cut_frames(&gt06(), &mut remainder, &wire);
        assert_eq!(protocols(&outcome), vec![0x01]);
        assert!(
            matches!(outcome.end, Some(ReaderEnd::Decode { .. })),
            "{:?}",
            outcome.end
        );
    }

    #[test]
    fn a_read_that_completes_no_frame_neither_fails_nor_delivers() {
        let wire = bytes(&[LOGIN]);
        let mut remainder = Vec::new();
        let outcome = cut_frames(&gt06(), &mut remainder, &wire[..5]);
        assert!(outcome.frames.is_empty() && outcome.end.is_none());
    }
}
