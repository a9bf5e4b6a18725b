//! `MediaStream`: one live stream (a channel of one device), the actor that feeds its
//! viewers. The publisher (a JT/T 1078 connection or an RTMP publisher) hands it FLV tags;
//! it keeps what a new viewer needs first (GOP cache) and puts each tag on every viewer's
//! bounded queue without ever waiting: a viewer whose queue is full skips to the next key
//! frame, and one that stays behind past the lag limit is disconnected.
//!
//! A stream ends when its publisher goes (its viewers' queues close), when nobody publishes
//! within the start timeout of its first viewer, or when nobody watches or publishes it.
//! An on-demand JT/T stream (iothub asked the device with 0x9101) is closed with 0x9102
//! `idle_close` after its last viewer left.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iothub::media::gop::GopCache;
use iothub::media::{FlvTag, TagKind};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use super::keys::StreamKey;

/// What a viewer's queue carries.
#[derive(Debug)]
pub enum ViewerItem {
    /// First item: which tracks the stream has and what a decoder needs first (metadata,
    /// sequence headers, the GOP from its key frame).
    Start {
        has_audio: bool,
        has_video: bool,
        tags: Vec<FlvTag>,
    },
    Tag(FlvTag),
}

pub enum StreamMsg {
    /// A tag from the publisher `publisher`.
    Tag(u64, FlvTag),
    /// A publisher took the stream; an older one is disconnected.
    Published(u64),
    /// The publisher with this id went away.
    Unpublished(u64),
    AddViewer(u64, mpsc::Sender<ViewerItem>),
    ViewerGone(u64),
    /// Once a second: start timeout, idle close, lagging viewers.
    Tick,
}

/// Shared between the stream and its publisher: tags sent and not yet handled, so a
/// publisher faster than the stream drops instead of growing the mailbox.
#[derive(Default)]
pub struct Backlog(pub AtomicUsize);

/// Tags a publisher may have in the stream's mailbox.
pub const MAX_BACKLOG: usize = 512;

/// What the stream tells the hub.
pub trait StreamOwner: Send + Sync + 'static {
    /// The stream ended: forget it.
    fn ended(&self, key: StreamKey, stream_id: u64);
    /// The last viewer of an on-demand stream left `idle_close` ago: ask the device to stop.
    fn idle(&self, key: StreamKey);
    /// The stream started (first tag of a publisher) or stopped: an event for the customer.
    fn started(&self, key: StreamKey, publisher: u64);
    fn stopped(&self, key: StreamKey, reason: &'static str);
}

pub struct StreamArgs {
    pub key: StreamKey,
    pub stream_id: u64,
    pub owner: Arc<dyn StreamOwner>,
    pub backlog: Arc<Backlog>,
    pub gop_max_tags: usize,
    pub gop_max_bytes: usize,
    pub viewer_lag_limit: Duration,
    pub start_timeout: Duration,
    pub idle_close: Duration,
    /// iothub asked the device for this stream (0x9101), so it closes it when unwatched.
    pub on_demand: bool,
}

pub struct MediaStream;

struct Viewer {
    id: u64,
    queue: mpsc::Sender<ViewerItem>,
    /// Waiting for the stream's first key frame before its start.
    waiting_start: bool,
    /// Skipping since then, because its queue was full.
    behind_since: Option<Instant>,
}

pub struct StreamState {
    args: StreamArgs,
    gop: GopCache,
    publisher: Option<u64>,
    published_once: bool,
    viewers: Vec<Viewer>,
    created: Instant,
    /// When the last viewer left (or the stream was created without one).
    unwatched_since: Option<Instant>,
    idle_signalled: bool,
    /// First audio tag's timestamp, for starting audio-only streams.
    first_audio_ts: Option<u32>,
    last_audio_ts: u32,
    video_seen: bool,
    tags_in: metrics::Counter,
    bytes_in: metrics::Counter,
    drops: metrics::Counter,
}

/// Audio-only streams start their viewers after this much audio without video.
const AUDIO_ONLY_AFTER_MS: u32 = 3000;

impl StreamState {
    /// Ready to start a viewer: a key frame (or, without video, enough audio) is cached.
    fn ready(&self) -> bool {
        if self.gop.has_video() {
            return true;
        }
        !self.video_seen
            && self
                .first_audio_ts
                .is_some_and(|first| self.last_audio_ts.wrapping_sub(first) >= AUDIO_ONLY_AFTER_MS)
    }

    fn start_item(&self) -> ViewerItem {
        ViewerItem::Start {
            has_audio: self.gop.has_audio(),
            has_video: self.gop.has_video(),
            tags: self.gop.start_tags(),
        }
    }

    fn fan_out(&mut self, tag: &FlvTag, now: Instant) {
        let ready = self.ready();
        let key_frame = tag.is_key_frame() || (!self.video_seen && tag.kind == TagKind::Audio);
        let lag_limit = self.args.viewer_lag_limit;
        let mut i = 0;
        while i < self.viewers.len() {
            let viewer = &mut self.viewers[i];
            let keep = if viewer.waiting_start {
                if ready {
                    let start = ViewerItem::Start {
                        has_audio: self.gop.has_audio(),
                        has_video: self.gop.has_video(),
                        tags: self.gop.start_tags(),
                    };
                    match viewer.queue.try_send(start) {
                        Ok(()) => {
                            viewer.waiting_start = false;
                            true
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => true,
                        Err(mpsc::error::TrySendError::Closed(_)) => false,
                    }
                } else {
                    true
                }
            } else if viewer.behind_since.is_some() && !key_frame {
                self.drops.increment(1);
                viewer
                    .behind_since
                    .is_none_or(|since| now.duration_since(since) < lag_limit)
            } else {
                match viewer.queue.try_send(ViewerItem::Tag(tag.clone())) {
                    Ok(()) => {
                        viewer.behind_since = None;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.drops.increment(1);
                        let since = *viewer.behind_since.get_or_insert(now);
                        now.duration_since(since) < lag_limit
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            };
            if keep {
                i += 1;
            } else {
                let gone = self.viewers.swap_remove(i);
                if !gone.queue.is_closed() {
                    metrics::counter!("iothub_media_viewers_dropped_total", "reason" => "lagging")
                        .increment(1);
                    tracing::info!(stream = %self.args.key, viewer = gone.id, "viewer stayed behind past the lag limit, disconnected");
                }
            }
        }
        if self.viewers.is_empty() && self.unwatched_since.is_none() {
            self.unwatched_since = Some(now);
        }
    }
}

impl Actor for MediaStream {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        args: StreamArgs,
    ) -> Result<StreamState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || StreamMsg::Tick);
        let kind = args.key.kind_label();
        metrics::gauge!("iothub_media_streams", "kind" => kind).increment(1.0);
        Ok(StreamState {
            gop: GopCache::new(args.gop_max_tags, args.gop_max_bytes),
            publisher: None,
            published_once: false,
            viewers: Vec::new(),
            created: Instant::now(),
            unwatched_since: Some(Instant::now()),
            idle_signalled: false,
            first_audio_ts: None,
            last_audio_ts: 0,
            video_seen: false,
            tags_in: metrics::counter!("iothub_media_tags_in_total", "kind" => kind),
            bytes_in: metrics::counter!("iothub_media_bytes_in_total", "kind" => kind),
            drops: metrics::counter!("iothub_media_viewer_tags_dropped_total", "kind" => kind),
            args,
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<StreamMsg>,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        metrics::gauge!("iothub_media_streams", "kind" => state.args.key.kind_label())
            .decrement(1.0);
        metrics::gauge!("iothub_media_viewers").decrement(state.viewers.len() as f64);
        state.args.owner.ended(state.args.key, state.args.stream_id);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        let now = Instant::now();
        match msg {
            StreamMsg::Tag(publisher, tag) => {
                state.args.backlog.0.fetch_sub(1, Ordering::Relaxed);
                if state.publisher != Some(publisher) {
                    return Ok(());
                }
                state.tags_in.increment(1);
                state.bytes_in.increment(tag.body.len() as u64);
                match tag.kind {
                    TagKind::Video => state.video_seen = true,
                    TagKind::Audio => {
                        state.first_audio_ts.get_or_insert(tag.timestamp);
                        state.last_audio_ts = tag.timestamp;
                    }
                    TagKind::Script => {}
                }
                state.gop.push(&tag);
                state.fan_out(&tag, now);
            }
            StreamMsg::Published(publisher) => {
                if state.publisher.is_some() {
                    tracing::info!(stream = %state.args.key, "a new publisher took the stream over");
                }
                state.publisher = Some(publisher);
                state.published_once = true;
                state.args.owner.started(state.args.key, publisher);
            }
            StreamMsg::Unpublished(publisher) => {
                if state.publisher == Some(publisher) {
                    state.args.owner.stopped(state.args.key, "publisher_left");
                    myself.stop(Some("publisher left".into()));
                }
            }
            StreamMsg::AddViewer(id, queue) => {
                let ready = state.ready();
                let mut viewer = Viewer {
                    id,
                    queue,
                    waiting_start: !ready,
                    behind_since: None,
                };
                if ready && viewer.queue.try_send(state.start_item()).is_err() {
                    viewer.waiting_start = true;
                }
                metrics::gauge!("iothub_media_viewers").increment(1.0);
                state.viewers.push(viewer);
                state.unwatched_since = None;
                state.idle_signalled = false;
            }
            StreamMsg::ViewerGone(id) => {
                let before = state.viewers.len();
                state.viewers.retain(|v| v.id != id);
                let removed = before - state.viewers.len();
                metrics::gauge!("iothub_media_viewers").decrement(removed as f64);
                if state.viewers.is_empty() && state.unwatched_since.is_none() {
                    state.unwatched_since = Some(now);
                }
            }
            StreamMsg::Tick => {
                let lag_limit = state.args.viewer_lag_limit;
                let before = state.viewers.len();
                state.viewers.retain(|v| {
                    !v.queue.is_closed()
                        && v.behind_since
                            .is_none_or(|since| now.duration_since(since) < lag_limit)
                });
                let removed = before - state.viewers.len();
                if removed > 0 {
                    metrics::gauge!("iothub_media_viewers").decrement(removed as f64);
                }
                if state.viewers.is_empty() && state.unwatched_since.is_none() {
                    state.unwatched_since = Some(now);
                }
                if state.publisher.is_none() {
                    let waited = now.duration_since(state.created);
                    if state.viewers.is_empty() || waited >= state.args.start_timeout {
                        if !state.published_once && !state.viewers.is_empty() {
                            metrics::counter!("iothub_media_start_timeouts_total").increment(1);
                        }
                        myself.stop(Some("nobody publishes".into()));
                    }
                    return Ok(());
                }
                if let Some(since) = state.unwatched_since {
                    if state.args.on_demand
                        && !state.idle_signalled
                        && now.duration_since(since) >= state.args.idle_close
                    {
                        state.idle_signalled = true;
                        state.args.owner.idle(state.args.key);
                    }
                }
            }
        }
        Ok(())
    }
}
