//! The node's streams by key, and the two things every protocol does with them: publish
//! and play. RTMP sessions, JT/T 1078 connections and HTTP-FLV viewers all come through
//! here, so limits, publishing rights and on-demand starts are decided in one place.
//!
//! The map is a plain mutex held for a lookup or an insert, never across an await; each
//! stream's state lives in its own [`MediaStream`] actor, supervised by the `Media`
//! supervisor.
//!
//! In cluster mode a stream lives on the node its publisher reached (through the balancer,
//! or at the address 0x9101 named). That node writes the stream's route to Redis
//! ([`StreamRoutes`]: its gateId and HTTP-FLV base URL, with the cluster's lease) when the
//! stream gets a publisher, renews it every third of a lease while the stream lives, and
//! deletes it (if still the owner) when the stream ends. A viewer at a node without the
//! stream is told where it is ([`Placement::Elsewhere`], a redirect); one for a JT/T live
//! stream flowing nowhere gets it asked of the device through whichever node holds the
//! device's session, then found where its media connection landed.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use iothub::event::{Event, MediaStreamRecord, Record};
use iothub::media::FlvTag;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

use super::keys::{StreamKey, StreamKind};
use super::signals::{DeviceSignals, SignalError};
use super::stream::{
    Backlog, MediaStream, StreamArgs, StreamMsg, StreamOwner, ViewerItem, MAX_BACKLOG,
};
use crate::cluster::routes::{Renewal, StreamRoutes};
use crate::config::MediaConfig;
use crate::publish::Publisher as EventPublisher;

/// Why a publish or play is refused; each maps to an HTTP status and an RTMP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such stream")]
    NotFound,
    #[error("device is not online on this node")]
    DeviceOffline,
    #[error("not allowed to publish this stream")]
    Forbidden,
    #[error("stream limit of this node reached")]
    TooManyStreams,
    #[error("viewer limit of this node reached")]
    TooManyViewers,
    #[error("the device did not start streaming in time")]
    StartTimeout,
    #[error("media server is stopping")]
    Stopping,
    /// Cluster mode: Redis or the node holding the device cannot be reached (says which).
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    pub fn http_status(&self) -> u16 {
        match self {
            Refusal::NotFound | Refusal::DeviceOffline => 404,
            Refusal::Forbidden => 403,
            Refusal::TooManyStreams
            | Refusal::TooManyViewers
            | Refusal::Stopping
            | Refusal::Unavailable(_) => 503,
            Refusal::StartTimeout => 504,
        }
    }
}

/// Where a publisher's stream comes from, for events and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Jt1078,
    Rtmp,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Jt1078 => "jt1078",
            Source::Rtmp => "rtmp",
        }
    }
}

struct Entry {
    stream_id: u64,
    actor: ActorRef<StreamMsg>,
    backlog: Arc<Backlog>,
    source: Option<Source>,
}

struct HubInner {
    streams: Mutex<HashMap<StreamKey, Entry>>,
    viewers: AtomicUsize,
    next_id: AtomicU64,
    config: MediaConfig,
    supervisor: ActorCell,
    signals: DeviceSignals,
    events: Option<EventPublisher>,
    /// Cluster mode: where streams are published, this node's and the others'.
    routes: Option<StreamRoutes>,
    /// JT/T live streams a viewer of this node has asked a device for, while it waits:
    /// a second viewer waits as well instead of asking again.
    starting: Mutex<HashSet<StreamKey>>,
}

/// Where a viewer is served.
pub enum Placement {
    /// On this node.
    Here(StreamViewer),
    /// At another node: the HTTP-FLV base URL of the node the stream is published at.
    Elsewhere(String),
}

/// Cheap clonable handle to the node's streams.
#[derive(Clone)]
pub struct MediaHub {
    inner: Arc<HubInner>,
}

/// The owner side of a stream, given to its actor.
struct Owner(std::sync::Weak<HubInner>);

impl StreamOwner for Owner {
    fn ended(&self, key: StreamKey, stream_id: u64) {
        let Some(hub) = self.0.upgrade() else { return };
        let published = {
            let mut streams = lock(&hub.streams);
            if streams.get(&key).is_some_and(|e| e.stream_id == stream_id) {
                streams.remove(&key).is_some_and(|e| e.source.is_some())
            } else {
                false
            }
        };
        if let (true, Some(routes)) = (published, hub.publishing_routes()) {
            let owner = hub.route_owner(stream_id);
            tokio::spawn(async move {
                if let Err(e) = routes.release(&key.to_string(), &owner).await {
                    tracing::debug!(stream = %key, error = %e, "stream route not released; it expires with its lease");
                }
            });
        }
    }

    fn idle(&self, key: StreamKey) {
        let Some(hub) = self.0.upgrade() else { return };
        let Some(channel) = key.on_demand_channel() else {
            return;
        };
        tracing::info!(stream = %key, "no viewer left, asking the device to stop (0x9102)");
        metrics::counter!("iothub_media_idle_closes_total").increment(1);
        let signals = hub.signals.clone();
        tokio::spawn(async move {
            if let Err(e) = signals.stop_live(key.imei, channel).await {
                tracing::info!(stream = %key, error = %e, "0x9102 not sent");
            }
        });
    }

    fn started(&self, key: StreamKey, _publisher: u64) {
        if let Some(hub) = self.0.upgrade() {
            let source = lock(&hub.streams).get(&key).and_then(|e| e.source);
            hub.event(key, "streamStart", source, None);
        }
    }

    fn stopped(&self, key: StreamKey, reason: &'static str) {
        if let Some(hub) = self.0.upgrade() {
            let source = lock(&hub.streams).get(&key).and_then(|e| e.source);
            hub.event(key, "streamStop", source, Some(reason));
        }
    }
}

impl HubInner {
    /// The stream routes this node writes: in cluster mode, with an advertised HTTP-FLV URL.
    fn publishing_routes(&self) -> Option<StreamRoutes> {
        self.routes
            .clone()
            .filter(|_| !self.config.advertise_http.is_empty())
    }

    /// The owner token of a stream's route: this process's instance and the stream's id.
    fn route_owner(&self, stream_id: u64) -> String {
        let instance = self
            .signals
            .cluster()
            .map_or("", |cluster| cluster.instance.as_str());
        format!("{instance}.s{stream_id}")
    }

    /// A running stream of `key` on this node that has had a publisher.
    fn published(&self, key: StreamKey) -> bool {
        lock(&self.streams)
            .get(&key)
            .is_some_and(|e| e.source.is_some() && is_running(&e.actor))
    }

    fn event(&self, key: StreamKey, kind: &str, source: Option<Source>, reason: Option<&str>) {
        let Some(events) = &self.events else { return };
        let channel = match key.kind {
            StreamKind::JimiLive { channel }
            | StreamKind::JtLive { channel }
            | StreamKind::JtPlayback { channel } => Some(channel),
            StreamKind::JimiHistory | StreamKind::Talk => None,
        };
        let record = MediaStreamRecord {
            device_imei: key.imei,
            event_type: kind.to_string(),
            stream: key.to_string(),
            channel,
            source: source.map_or("rtmp", Source::label).to_string(),
            gate_time: chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string(),
            reason: reason.map(str::to_string),
        };
        let event = Event {
            topic: iothub::event::Topic::IothubEvent,
            imei: key.imei,
            record: Record::MediaStream(record),
        };
        let events = events.clone();
        tokio::spawn(async move {
            if let Err(e) = events.publish_unacknowledged(vec![event]).await {
                tracing::warn!(error = %e, "media stream event not stored");
            }
        });
    }
}

/// The publishing side of a stream. Dropping it ends the stream.
pub struct StreamPublisher {
    key: StreamKey,
    id: u64,
    actor: ActorRef<StreamMsg>,
    backlog: Arc<Backlog>,
    /// Tags were dropped (the stream fell behind): send nothing until the next key frame.
    skipping: bool,
}

impl StreamPublisher {
    /// Hands a tag to the stream without waiting. False when the stream has ended (another
    /// publisher took it over, or the node is stopping): the publisher should disconnect.
    pub fn push(&mut self, tag: FlvTag) -> bool {
        if self.skipping {
            if !tag.is_key_frame() && !tag.is_sequence_header() {
                return true;
            }
            self.skipping = false;
        }
        if self.backlog.0.fetch_add(1, Ordering::Relaxed) >= MAX_BACKLOG {
            self.backlog.0.fetch_sub(1, Ordering::Relaxed);
            self.skipping = true;
            metrics::counter!("iothub_media_publisher_tags_dropped_total").increment(1);
            return true;
        }
        if self.actor.cast(StreamMsg::Tag(self.id, tag)).is_err() {
            self.backlog.0.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub fn key(&self) -> StreamKey {
        self.key
    }
}

impl Drop for StreamPublisher {
    fn drop(&mut self) {
        let _ = self.actor.cast(StreamMsg::Unpublished(self.id));
    }
}

/// A viewer of a stream: what it needs first, then the stream's tags as they come.
pub struct StreamViewer {
    id: u64,
    actor: ActorRef<StreamMsg>,
    queue: mpsc::Receiver<ViewerItem>,
    hub: Arc<HubInner>,
}

/// What a viewer is sent before the stream's live tags.
pub struct ViewerStart {
    pub has_audio: bool,
    pub has_video: bool,
    pub tags: Vec<FlvTag>,
}

impl StreamViewer {
    /// Waits until the stream can start this viewer (for an on-demand stream, until the
    /// device streams). `Err` when it cannot within `timeout` or the stream ended.
    pub async fn start(&mut self, timeout: Duration) -> Result<ViewerStart, Refusal> {
        match tokio::time::timeout(timeout, self.queue.recv()).await {
            Ok(Some(ViewerItem::Start {
                has_audio,
                has_video,
                tags,
            })) => Ok(ViewerStart {
                has_audio,
                has_video,
                tags,
            }),
            // The stream ended before it could start this viewer: nobody published in time,
            // or the publisher left before its first key frame.
            Ok(None) => Err(Refusal::StartTimeout),
            Ok(Some(ViewerItem::Tag(_))) => Err(Refusal::NotFound),
            Err(_) => Err(Refusal::StartTimeout),
        }
    }

    /// The next live tag; `None` when the stream ended or this viewer was disconnected for
    /// staying behind.
    pub async fn next(&mut self) -> Option<FlvTag> {
        loop {
            match self.queue.recv().await? {
                ViewerItem::Tag(tag) => return Some(tag),
                // A viewer that started again after skipping: its tags continue the stream.
                ViewerItem::Start { .. } => continue,
            }
        }
    }

    /// [`StreamViewer::next`] as a poll, for bodies that are polled.
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FlvTag>> {
        loop {
            match std::task::ready!(self.queue.poll_recv(cx)) {
                Some(ViewerItem::Tag(tag)) => return std::task::Poll::Ready(Some(tag)),
                Some(ViewerItem::Start { .. }) => continue,
                None => return std::task::Poll::Ready(None),
            }
        }
    }

    /// A live tag if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<FlvTag> {
        loop {
            match self.queue.try_recv().ok()? {
                ViewerItem::Tag(tag) => return Some(tag),
                ViewerItem::Start { .. } => continue,
            }
        }
    }
}

/// One viewer's timeline: the stream's timestamps moved so that this viewer's first frame
/// is at 0 (players start a clock at the first tag they see). Tags from before it (the
/// metadata and sequence headers) are put at 0.
pub struct ViewerClock {
    base: Option<u32>,
}

impl ViewerClock {
    /// Starts at the first frame of `start` (the tags a viewer is sent first), or at the
    /// first frame that comes later.
    pub fn new(start: &[FlvTag]) -> ViewerClock {
        let base = start
            .iter()
            .find(|t| t.kind != iothub::media::TagKind::Script && !t.is_sequence_header())
            .map(|t| t.timestamp);
        ViewerClock { base }
    }

    pub fn retime(&mut self, tag: &FlvTag) -> FlvTag {
        let media = tag.kind != iothub::media::TagKind::Script && !tag.is_sequence_header();
        let base = match self.base {
            Some(base) => base,
            None if media => *self.base.insert(tag.timestamp),
            None => tag.timestamp,
        };
        let offset = tag.timestamp.wrapping_sub(base);
        let timestamp = if offset > i32::MAX as u32 { 0 } else { offset };
        FlvTag {
            kind: tag.kind,
            timestamp,
            body: tag.body.clone(),
        }
    }
}

impl Drop for StreamViewer {
    fn drop(&mut self) {
        self.hub.viewers.fetch_sub(1, Ordering::Relaxed);
        let _ = self.actor.cast(StreamMsg::ViewerGone(self.id));
    }
}

impl MediaHub {
    /// Starts the `Media` supervisor under `parent`.
    pub async fn start(
        config: MediaConfig,
        parent: ActorCell,
        signals: DeviceSignals,
        events: Option<EventPublisher>,
    ) -> anyhow::Result<MediaHub> {
        let (supervisor, _) = Actor::spawn_linked(None, MediaSupervisor, (), parent).await?;
        let routes = signals.cluster().map(|cluster| {
            StreamRoutes::new(
                cluster.pool.clone(),
                cluster.keys.clone(),
                &cluster.gate_id,
                cluster.lease,
                &config.advertise_http,
            )
        });
        let lease = signals.cluster().map(|cluster| cluster.lease);
        let inner = Arc::new(HubInner {
            streams: Mutex::new(HashMap::new()),
            viewers: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            config,
            supervisor: supervisor.get_cell(),
            signals,
            events,
            routes,
            starting: Mutex::new(HashSet::new()),
        });
        if let (Some(routes), Some(lease)) = (inner.publishing_routes(), lease) {
            tokio::spawn(renew_stream_routes(
                Arc::downgrade(&inner),
                routes,
                lease / 3,
            ));
        }
        Ok(MediaHub { inner })
    }

    pub fn config(&self) -> &MediaConfig {
        &self.inner.config
    }

    pub fn signals(&self) -> &DeviceSignals {
        &self.inner.signals
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The stream of `key`, made (and its actor started) when there is none.
    async fn stream(
        &self,
        key: StreamKey,
        on_demand: bool,
    ) -> Result<(ActorRef<StreamMsg>, Arc<Backlog>, bool), Refusal> {
        {
            let mut streams = lock(&self.inner.streams);
            if let Some(e) = streams.get(&key) {
                if is_running(&e.actor) {
                    return Ok((e.actor.clone(), e.backlog.clone(), false));
                }
                // Its actor failed (a failed actor skips the clean-up that removes it).
                streams.remove(&key);
            }
        }
        if lock(&self.inner.streams).len() >= self.inner.config.max_streams {
            metrics::counter!("iothub_media_refusals_total", "reason" => "streams").increment(1);
            return Err(Refusal::TooManyStreams);
        }
        let stream_id = self.next_id();
        let backlog = Arc::new(Backlog::default());
        let c = &self.inner.config;
        let args = StreamArgs {
            key,
            stream_id,
            owner: Arc::new(Owner(Arc::downgrade(&self.inner))),
            backlog: backlog.clone(),
            gop_max_tags: c.gop_max_tags,
            gop_max_bytes: c.gop_max_bytes,
            viewer_lag_limit: c.viewer_lag_limit,
            start_timeout: c.start_timeout,
            idle_close: c.idle_close,
            on_demand,
        };
        let (actor, _) =
            Actor::spawn_linked(None, MediaStream, args, self.inner.supervisor.clone())
                .await
                .map_err(|_| Refusal::Stopping)?;
        let mut streams = lock(&self.inner.streams);
        if let Some(existing) = streams.get(&key) {
            // Made by another caller meanwhile: use that one.
            actor.stop(None);
            return Ok((existing.actor.clone(), existing.backlog.clone(), false));
        }
        streams.insert(
            key,
            Entry {
                stream_id,
                actor: actor.clone(),
                backlog: backlog.clone(),
                source: None,
            },
        );
        Ok((actor, backlog, true))
    }

    /// Takes the publishing side of `key` (a newer publisher replaces an older one). The
    /// caller has checked the publisher's right to it.
    pub async fn publish(
        &self,
        key: StreamKey,
        source: Source,
    ) -> Result<StreamPublisher, Refusal> {
        // A JT/T live stream nobody watches is closed whoever started it: it costs the
        // device's mobile data.
        let (actor, backlog, _) = self.stream(key, key.on_demand_channel().is_some()).await?;
        let stream_id = lock(&self.inner.streams).get_mut(&key).map(|e| {
            e.source = Some(source);
            e.stream_id
        });
        if let (Some(stream_id), Some(routes)) = (stream_id, self.inner.publishing_routes()) {
            let owner = self.inner.route_owner(stream_id);
            tokio::spawn(async move {
                match routes.claim(&key.to_string(), &owner).await {
                    Ok(()) => tracing::debug!(stream = %key, "stream route claimed"),
                    Err(e) => {
                        tracing::warn!(stream = %key, error = %e, "stream route not claimed; the renewal claims it when Redis answers")
                    }
                }
            });
        }
        let id = self.next_id();
        actor
            .cast(StreamMsg::Published(id))
            .map_err(|_| Refusal::Stopping)?;
        metrics::counter!("iothub_media_publishes_total", "source" => source.label()).increment(1);
        Ok(StreamPublisher {
            key,
            id,
            actor,
            backlog,
            skipping: false,
        })
    }

    /// A viewer of `key`. A stream that is not flowing is waited for while its device is
    /// online on this node; a JT/T live stream is then asked of the device (0x9101).
    pub async fn play(&self, key: StreamKey) -> Result<StreamViewer, Refusal> {
        if self.inner.viewers.fetch_add(1, Ordering::Relaxed) >= self.inner.config.max_viewers {
            self.inner.viewers.fetch_sub(1, Ordering::Relaxed);
            metrics::counter!("iothub_media_refusals_total", "reason" => "viewers").increment(1);
            return Err(Refusal::TooManyViewers);
        }
        let result = self.attach_viewer(key).await;
        if result.is_err() {
            self.inner.viewers.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }

    async fn attach_viewer(&self, key: StreamKey) -> Result<StreamViewer, Refusal> {
        let existing = lock(&self.inner.streams)
            .get(&key)
            .map(|e| e.actor.clone())
            .filter(is_running);
        let actor = match existing {
            Some(actor) => actor,
            None => {
                // Not flowing: wait for it while the device is online (a JT/T live stream is
                // asked of the device; a playback or a JIMI stream is what the customer
                // asked the device for just before opening the URL).
                if !self.inner.signals.online_here(key.imei).await {
                    return Err(Refusal::DeviceOffline);
                }
                let channel = key.on_demand_channel();
                let (actor, _, created) = self.stream(key, channel.is_some()).await?;
                if let (true, Some(channel)) = (created, channel) {
                    tracing::info!(stream = %key, "viewer for a stream not flowing: asking the device (0x9101)");
                    metrics::counter!("iothub_media_on_demand_starts_total").increment(1);
                    if let Err(e) = self.inner.signals.start_live(key.imei, channel).await {
                        tracing::info!(stream = %key, error = %e, "0x9101 not sent");
                        actor.stop(None);
                        return Err(Refusal::DeviceOffline);
                    }
                }
                actor
            }
        };
        let id = self.next_id();
        let capacity = self.inner.config.viewer_queue_tags;
        let (tx, rx) = mpsc::channel(capacity);
        actor
            .cast(StreamMsg::AddViewer(id, tx))
            .map_err(|_| Refusal::NotFound)?;
        Ok(StreamViewer {
            id,
            actor,
            queue: rx,
            hub: self.inner.clone(),
        })
    }

    /// Where a viewer of `key` is served. On a single node, as [`play`](Self::play). In
    /// cluster mode: a stream flowing here is played here; one Redis names at another node
    /// is [`Placement::Elsewhere`]; a JT/T live stream flowing nowhere is asked of the
    /// device (0x9101) through the node that holds its session, and any other stream is
    /// waited for while the device is online somewhere; either is then found where it
    /// starts (Redis polled every 200 ms, up to `media.start_timeout`).
    pub async fn locate(&self, key: StreamKey) -> Result<Placement, Refusal> {
        let Some(routes) = self.inner.routes.clone() else {
            return self.play(key).await.map(Placement::Here);
        };
        let flowing_here = lock(&self.inner.streams)
            .get(&key)
            .is_some_and(|e| is_running(&e.actor));
        if flowing_here {
            return self.play(key).await.map(Placement::Here);
        }
        if let Some(url) = self.published_elsewhere(&routes, key).await? {
            return Ok(Placement::Elsewhere(url));
        }
        let _starting = match key.on_demand_channel() {
            Some(channel) => match Starting::begin(&self.inner, key) {
                Some(starting) => {
                    tracing::info!(stream = %key, "viewer for a stream flowing nowhere: asking the device (0x9101)");
                    metrics::counter!("iothub_media_on_demand_starts_total").increment(1);
                    match self.inner.signals.start_live(key.imei, channel).await {
                        Ok(()) => {}
                        Err(SignalError::Unreachable(why)) => {
                            return Err(Refusal::Unavailable(why))
                        }
                        Err(e) => {
                            tracing::info!(stream = %key, error = %e, "0x9101 not sent");
                            return Err(Refusal::DeviceOffline);
                        }
                    }
                    Some(starting)
                }
                // Another viewer of this node asked already: wait with it.
                None => None,
            },
            None => {
                if !self.inner.signals.online(key.imei).await {
                    return Err(Refusal::DeviceOffline);
                }
                None
            }
        };
        let deadline = Instant::now() + self.inner.config.start_timeout;
        loop {
            if self.inner.published(key) {
                return self.play(key).await.map(Placement::Here);
            }
            if let Some(url) = self.published_elsewhere(&routes, key).await? {
                return Ok(Placement::Elsewhere(url));
            }
            if Instant::now() >= deadline {
                metrics::counter!("iothub_media_start_timeouts_total").increment(1);
                return Err(Refusal::StartTimeout);
            }
            tokio::time::sleep(ROUTE_POLL).await;
        }
    }

    /// The base URL of the other node Redis says `key` is published at.
    async fn published_elsewhere(
        &self,
        routes: &StreamRoutes,
        key: StreamKey,
    ) -> Result<Option<String>, Refusal> {
        match routes.lookup(&key.to_string()).await {
            // A route naming this node without a stream here is a leftover of a stream
            // that just ended: it expires or is released.
            Ok(Some(route)) if route.gate != routes.gate_id() => Ok(Some(route.url)),
            Ok(_) => Ok(None),
            Err(e) => Err(Refusal::Unavailable(e.to_string())),
        }
    }

    /// [`MediaHub::play`] and the viewer's start (what it is sent first), waited for up to
    /// the start timeout: what every egress does before its first byte.
    pub async fn watch(&self, key: StreamKey) -> Result<(StreamViewer, ViewerStart), Refusal> {
        let mut viewer = self.play(key).await?;
        let start = viewer.start(self.inner.config.start_timeout).await?;
        Ok((viewer, start))
    }

    /// Streams on this node.
    pub fn stream_count(&self) -> usize {
        lock(&self.inner.streams).len()
    }

    /// Stops every stream (their viewers end).
    pub async fn shutdown(&self) {
        self.inner
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5)))
            .await
            .ok();
    }
}

/// How often a viewer waiting for a stream to start somewhere in the cluster asks Redis.
const ROUTE_POLL: Duration = Duration::from_millis(200);

/// A JT/T live stream this node asked a device for; forgotten when dropped.
struct Starting {
    hub: Arc<HubInner>,
    key: StreamKey,
}

impl Starting {
    /// `None` when a viewer of this node is already waiting for `key`.
    fn begin(hub: &Arc<HubInner>, key: StreamKey) -> Option<Starting> {
        lock(&hub.starting).insert(key).then(|| Starting {
            hub: hub.clone(),
            key,
        })
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        lock(&self.hub.starting).remove(&self.key);
    }
}

/// Renews the routes of this node's published streams every `period` while the hub lives.
async fn renew_stream_routes(hub: Weak<HubInner>, routes: StreamRoutes, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let owned: Vec<(String, String)> = {
            let Some(hub) = hub.upgrade() else { return };
            let streams = lock(&hub.streams);
            let owned = streams
                .iter()
                .filter(|(_, e)| e.source.is_some())
                .map(|(key, e)| (key.to_string(), hub.route_owner(e.stream_id)))
                .collect();
            owned
        };
        if owned.is_empty() {
            continue;
        }
        match routes.renew(&owned).await {
            Ok(outcomes) => {
                for ((stream, _), outcome) in owned.iter().zip(outcomes) {
                    if outcome == Renewal::Lost {
                        metrics::counter!("iothub_media_stream_routes_lost_total").increment(1);
                        tracing::info!(%stream, "another node publishes this stream now; its viewers are sent there");
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "stream routes not renewed; retried next round");
            }
        }
    }
}

fn is_running(actor: &ActorRef<StreamMsg>) -> bool {
    !matches!(
        actor.get_status(),
        ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
    )
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `Media` supervisor: a stream actor that fails is logged and counted, and its stream
/// ends (its publisher and viewers see it gone); the node goes on.
struct MediaSupervisor;

impl Actor for MediaSupervisor {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            metrics::counter!("iothub_media_stream_failures_total").increment(1);
            tracing::error!(actor = ?cell.get_id(), %error, "media stream failed");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use iothub::imei::Imei;
    use iothub::media::{FlvTag, TagKind};
    use ractor::Actor;

    use super::*;
    use crate::config::Config;

    const IMEI: &str = "868120303960873";

    fn key() -> StreamKey {
        StreamKey::parse(&format!("live/1/{IMEI}")).unwrap()
    }

    fn video(timestamp: u32, key_frame: bool) -> FlvTag {
        let first = if key_frame { 0x17 } else { 0x27 };
        FlvTag {
            kind: TagKind::Video,
            timestamp,
            body: Bytes::from(vec![first, 0x01, 0, 0, 0, 0, 0, 0, 1, 0x65]),
        }
    }

    fn sequence_header() -> FlvTag {
        FlvTag {
            kind: TagKind::Video,
            timestamp: 0,
            body: Bytes::from_static(&[0x17, 0x00, 0, 0, 0, 1, 0x42, 0, 0x1e, 0xff]),
        }
    }

    async fn hub(viewer_queue_tags: usize, lag_limit: Duration) -> MediaHub {
        let mut config = Config::from_toml_str("[api]\ntoken = \"t\"\n", &|_| None)
            .unwrap()
            .media;
        config.viewer_queue_tags = viewer_queue_tags;
        config.viewer_lag_limit = lag_limit;
        let (parent, _) = Actor::spawn(None, TestParent, ()).await.unwrap();
        MediaHub::start(config, parent.get_cell(), DeviceSignals::none(), None)
            .await
            .unwrap()
    }

    struct TestParent;

    impl Actor for TestParent {
        type Msg = ();
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_new_viewer_starts_at_the_last_key_frame() {
        let hub = hub(64, Duration::from_secs(10)).await;
        let mut publisher = hub.publish(key(), Source::Rtmp).await.unwrap();
        publisher.push(sequence_header());
        publisher.push(video(0, true));
        publisher.push(video(40, false));
        publisher.push(video(80, true));
        publisher.push(video(120, false));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut viewer = hub.play(key()).await.unwrap();
        let start = viewer.start(Duration::from_secs(2)).await.unwrap();
        let stamps: Vec<u32> = start.tags.iter().map(|t| t.timestamp).collect();
        assert_eq!(stamps, vec![0, 80, 120]);
        assert!(start.tags[0].is_sequence_header());
    }

    #[tokio::test]
    async fn live_tags_follow_the_start() {
        let hub = hub(64, Duration::from_secs(10)).await;
        let mut publisher = hub.publish(key(), Source::Rtmp).await.unwrap();
        publisher.push(sequence_header());
        publisher.push(video(0, true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut viewer = hub.play(key()).await.unwrap();
        viewer.start(Duration::from_secs(2)).await.unwrap();
        publisher.push(video(40, false));
        let next = tokio::time::timeout(Duration::from_secs(2), viewer.next())
            .await
            .unwrap();
        assert_eq!(next.map(|t| t.timestamp), Some(40));
    }

    #[tokio::test]
    async fn a_viewer_that_stops_reading_is_dropped_and_the_others_go_on() {
        let hub = hub(16, Duration::from_millis(300)).await;
        let mut publisher = hub.publish(key(), Source::Rtmp).await.unwrap();
        publisher.push(sequence_header());
        publisher.push(video(0, true));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut stalled = hub.play(key()).await.unwrap();
        stalled.start(Duration::from_secs(2)).await.unwrap();
        let mut reading = hub.play(key()).await.unwrap();
        reading.start(Duration::from_secs(2)).await.unwrap();
        let mut received = 0;
        for i in 1..=200u32 {
            publisher.push(video(i * 40, i % 25 == 0));
            while reading.try_next().is_some() {
                received += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        while reading.try_next().is_some() {
            received += 1;
        }
        assert_eq!(received, 200, "the reading viewer lost tags");
        // The stalled viewer's queue was closed by the stream: after what it holds, the end.
        let mut held = 0;
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(500), stalled.next()).await
        {
            held += 1;
        }
        assert!(held <= 16, "the stalled viewer held {held} tags");
    }

    #[tokio::test]
    async fn an_offline_device_has_no_stream_to_wait_for() {
        let hub = hub(16, Duration::from_secs(10)).await;
        let imei = Imei::parse(IMEI).unwrap();
        let refusal = hub.play(StreamKey::jt1078(imei, 1, false)).await.err();
        assert_eq!(refusal, Some(Refusal::DeviceOffline));
    }

    #[test]
    fn a_viewer_clock_starts_at_the_first_frame() {
        let start = [sequence_header(), video(1000, true)];
        let mut clock = ViewerClock::new(&start);
        assert_eq!(clock.retime(&start[0]).timestamp, 0);
        assert_eq!(clock.retime(&start[1]).timestamp, 0);
        assert_eq!(clock.retime(&video(1040, false)).timestamp, 40);
    }

    /// A hub of node `gate` in a cluster on `pool` (its sessions: none), publishing at
    /// `http://<gate>:8880`.
    async fn cluster_hub(
        pool: crate::cluster::redis::Pool,
        keys: crate::cluster::redis::Keys,
        gate: &str,
    ) -> MediaHub {
        use crate::cluster::node::Nodes;
        use crate::cluster::routes::Routes;
        use crate::cluster::Cluster;
        use crate::registry::{Registry, RegistryActor};
        let lease = Duration::from_secs(30);
        let cluster = Arc::new(Cluster {
            gate_id: gate.to_string(),
            instance: format!("{gate}-instance"),
            advertise: String::new(),
            routes: Routes::new(pool.clone(), keys.clone(), gate, lease),
            nodes: Nodes::new(pool.clone(), keys.clone(), lease),
            pool,
            keys,
            lease,
            token: "t".to_string(),
            client: reqwest::Client::new(),
        });
        let (registry, _) = Actor::spawn(None, RegistryActor, Some(cluster.clone()))
            .await
            .unwrap();
        let registry = Registry {
            actor: registry,
            cluster: Some(cluster),
        };
        let mut config = Config::from_toml_str("[api]\ntoken = \"t\"\n", &|_| None)
            .unwrap()
            .media;
        config.advertise_http = format!("http://{gate}:8880");
        config.start_timeout = Duration::from_secs(1);
        let (parent, _) = Actor::spawn(None, TestParent, ()).await.unwrap();
        let signals = DeviceSignals::new(registry, String::new(), 10_000);
        MediaHub::start(config, parent.get_cell(), signals, None)
            .await
            .unwrap()
    }

    fn jt_live(imei: &str) -> StreamKey {
        StreamKey::jt1078(Imei::parse(imei).unwrap(), 1, false)
    }

    #[tokio::test]
    async fn a_stream_published_at_another_node_is_located_there() {
        let r = crate::cluster::redis::testing::redis().await;
        let hub = cluster_hub(r.pool.clone(), r.keys.clone(), "node-b").await;
        let other = StreamRoutes::new(
            r.pool.clone(),
            r.keys.clone(),
            "node-a",
            Duration::from_secs(30),
            "http://node-a:8880",
        );
        let key = jt_live("868120303960881");
        other.claim(&key.to_string(), "a.s1").await.unwrap();
        let placement = hub.locate(key).await;
        assert!(
            matches!(&placement, Ok(Placement::Elsewhere(url)) if url == "http://node-a:8880"),
            "not sent to node-a: {:?}",
            placement.as_ref().err()
        );
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_stream_of_a_device_online_nowhere_is_refused_as_offline() {
        let r = crate::cluster::redis::testing::redis().await;
        let hub = cluster_hub(r.pool.clone(), r.keys.clone(), "node-b").await;
        let refusal = hub.locate(jt_live("868120303960899")).await.err();
        assert_eq!(refusal, Some(Refusal::DeviceOffline));
        r.cleanup().await;
    }

    #[tokio::test]
    async fn a_stream_published_here_is_routed_to_this_node_until_it_ends() {
        let r = crate::cluster::redis::testing::redis().await;
        let hub = cluster_hub(r.pool.clone(), r.keys.clone(), "node-b").await;
        let routes = StreamRoutes::new(
            r.pool.clone(),
            r.keys.clone(),
            "node-x",
            Duration::from_secs(30),
            "",
        );
        let key = jt_live("868120303960907");
        let publisher = hub.publish(key, Source::Jt1078).await.unwrap();
        let mut route = None;
        for _ in 0..50 {
            route = routes.lookup(&key.to_string()).await.unwrap();
            if route.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            route.clone().map(|r| (r.gate, r.url)),
            Some(("node-b".to_string(), "http://node-b:8880".to_string()))
        );
        drop(publisher);
        for _ in 0..50 {
            route = routes.lookup(&key.to_string()).await.unwrap();
            if route.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(route, None, "the ended stream's route is still there");
        r.cleanup().await;
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_a_503_naming_redis() {
        let (pool, keys) = crate::cluster::redis::testing::unreachable();
        let hub = cluster_hub(pool, keys, "node-b").await;
        let refusal = hub.locate(jt_live("868120303960915")).await.err();
        let Some(Refusal::Unavailable(why)) = &refusal else {
            panic!("not refused as unavailable: {refusal:?}");
        };
        assert!(why.contains("redis"), "{why}");
        assert_eq!(refusal.map(|r| r.http_status()), Some(503));
    }
}
