//! RTMP and RTMPS: JIMI dashcams publish `rtmp://host/live/<ch>/<imei>`, and any RTMP
//! player (FFmpeg, VLC, OBS) plays a stream of the node at the same URL. RTMPS is the same
//! byte stream inside TLS.
//!
//! The protocol is rml_rtmp's, without I/O: its handshake and server session turn bytes into
//! events and replies; this module owns the sockets and decides. Audio, video and metadata
//! messages are FLV tag bodies, so a publisher's messages become [`FlvTag`]s as they are and
//! a player's messages are the stream's tags as they are (timestamps from 0 for each
//! player, as HTTP-FLV does).
//!
//! rml_rtmp's S1 carries version bytes `80 00 07 02` and the server digest, and answers C1's
//! digest in S2: FFmpeg as a player checks both when S1's version is 3 or more, and they hold.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections; each connection's replies go through a
//! queue of [`OUT_QUEUE`] packets to one writer, and a write that waits longer than
//! [`IDLE_TIMEOUT`] closes the connection (a player that stopped reading). A connection
//! that neither plays nor sends anything for that long is closed too. Until a connection
//! publishes (which needs the rights), it may send [`MAX_INPUT_UNPUBLISHED`] bytes in all:
//! players and connections being set up send little, and the chunk reader holds what a
//! peer sends of a message until the message is complete.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use iothub::media::{flv, FlvTag, TagKind};
use ring::hmac;
use rml_rtmp::chunk_io::{ChunkDeserializer, Packet};
use rml_rtmp::handshake::{Handshake, HandshakeProcessResult, PeerType};
use rml_rtmp::messages::RtmpMessage;
use rml_rtmp::rml_amf0;
use rml_rtmp::sessions::{
    ServerSession, ServerSessionConfig, ServerSessionError, ServerSessionEvent,
    ServerSessionResult, StreamMetadata,
};
use rml_rtmp::time::RtmpTimestamp;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};

use super::hub::{MediaHub, Refusal, Source, StreamPublisher, StreamViewer, ViewerClock};
use super::keys::StreamKey;
use crate::tls::ReloadingTls;

/// Most RTMP and RTMPS connections one listener serves at once; more wait in the backlog.
pub const MAX_CONNECTIONS: usize = 4096;
/// Longest wait for a write, for a publisher's next bytes, and for a connection that has
/// not started to play or publish (the HTTP idle timeout).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest TLS handshake of an RTMPS connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Packets (RTMP messages, chunked) waiting for the writer of one connection.
pub const OUT_QUEUE: usize = 64;
/// Most bytes one socket write gathers from the queue.
const WRITE_BATCH: usize = 64 * 1024;
const READ_BUFFER: usize = 16 * 1024;
/// Deepest AMF0 nesting accepted in a command or data message; real ones nest 2 levels.
const MAX_AMF_NESTING: usize = 16;
/// Most bytes a connection that does not publish may send (a player sends an
/// acknowledgement of a few bytes per gigabyte it receives).
pub const MAX_INPUT_UNPUBLISHED: usize = 1024 * 1024;

/// Why a connection ended, logged at debug level: the peer's doing or its stream's.
#[derive(Debug, thiserror::Error)]
enum Closed {
    #[error("peer closed the connection")]
    ByPeer,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("a write waited more than {0:?}")]
    WriteStalled(Duration),
    #[error("the writer is gone")]
    WriterGone,
    #[error("tls handshake: {0}")]
    Tls(String),
    #[error("rtmp handshake: {0}")]
    Handshake(String),
    #[error("rtmp: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("the stream ended")]
    StreamEnded,
}

impl From<ServerSessionError> for Closed {
    fn from(e: ServerSessionError) -> Closed {
        Closed::Protocol(e.to_string())
    }
}

/// Accepts RTMP connections (RTMPS when `tls` is set), each served by its own task, until
/// this task is aborted; connections already open end with their streams.
pub async fn serve(listener: TcpListener, hub: MediaHub, tls: Option<Arc<ReloadingTls>>) {
    serve_with(listener, hub, tls, IDLE_TIMEOUT).await
}

/// [`serve`] with `idle` instead of [`IDLE_TIMEOUT`] (tests wait less).
async fn serve_with(
    listener: TcpListener,
    hub: MediaHub,
    tls: Option<Arc<ReloadingTls>>,
    idle: Duration,
) {
    let protocol = if tls.is_some() { "rtmps" } else { "rtmp" };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (socket, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(protocol, error = %e, "media accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let hub = hub.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _open = OpenConnection::new(protocol);
            let result = match tls {
                None => connection(socket, &hub, protocol, idle).await,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor().accept(socket))
                        .await
                    {
                        Ok(Ok(stream)) => connection(stream, &hub, protocol, idle).await,
                        Ok(Err(e)) => Err(Closed::Tls(e.to_string())),
                        Err(_) => Err(Closed::Tls("timed out".to_string())),
                    }
                }
            };
            if let Err(reason) = result {
                tracing::debug!(%peer, protocol, %reason, "rtmp connection closed");
            }
        });
    }
}

/// The connections gauge, counted down when the connection's task ends however it ends.
struct OpenConnection(metrics::Gauge);

impl OpenConnection {
    fn new(protocol: &'static str) -> OpenConnection {
        let gauge = metrics::gauge!("iothub_media_rtmp_connections", "protocol" => protocol);
        gauge.increment(1.0);
        OpenConnection(gauge)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// One connection: a writer task fed by a bounded queue, and the session reading.
async fn connection<S>(
    stream: S,
    hub: &MediaHub,
    protocol: &'static str,
    idle: Duration,
) -> Result<(), Closed>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (out, queue) = mpsc::channel(OUT_QUEUE);
    let bytes_out = metrics::counter!("iothub_media_bytes_out_total", "protocol" => protocol);
    let writing = tokio::spawn(write_out(writer, queue, bytes_out, idle));
    let result = session(&mut reader, hub, protocol, out, idle).await;
    // The queue is closed: the writer sends what is left (a refusal, say) and ends.
    let written = writing.await.unwrap_or(Err(Closed::WriterGone));
    result.and(written)
}

/// Writes queued packets in batches; a write waiting `idle` ends the connection.
async fn write_out<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::Receiver<Bytes>,
    bytes_out: metrics::Counter,
    idle: Duration,
) -> Result<(), Closed> {
    let mut batch = BytesMut::with_capacity(WRITE_BATCH);
    while let Some(first) = queue.recv().await {
        batch.clear();
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            let Ok(more) = queue.try_recv() else { break };
            batch.extend_from_slice(&more);
        }
        let write = async {
            writer.write_all(&batch).await?;
            writer.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Ok(Ok(())) => bytes_out.increment(batch.len() as u64),
            Ok(Err(e)) => return Err(Closed::Io(e)),
            Err(_) => return Err(Closed::WriteStalled(idle)),
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), writer.shutdown()).await;
    Ok(())
}

/// Reads what is there; `limit` bounds the wait.
async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    limit: Option<Duration>,
) -> Result<(), Closed> {
    buf.clear();
    buf.reserve(READ_BUFFER);
    let n = match limit {
        Some(limit) => tokio::time::timeout(limit, reader.read_buf(buf))
            .await
            .map_err(|_| Closed::Idle(limit))??,
        None => reader.read_buf(buf).await?,
    };
    if n == 0 {
        return Err(Closed::ByPeer);
    }
    Ok(())
}

async fn session<R: AsyncRead + Unpin>(
    reader: &mut R,
    hub: &MediaHub,
    protocol: &'static str,
    out: mpsc::Sender<Bytes>,
    idle: Duration,
) -> Result<(), Closed> {
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut handshake = Handshake::new(PeerType::Server);
    let after_handshake = loop {
        read_some(reader, &mut buf, Some(idle)).await?;
        let step = catch_unwind(AssertUnwindSafe(|| handshake.process_bytes(&buf)))
            .map_err(|_| Closed::Handshake("malformed".to_string()))?
            .map_err(|e| Closed::Handshake(e.to_string()))?;
        match step {
            HandshakeProcessResult::InProgress { response_bytes } => {
                send_bytes(&out, response_bytes).await?;
            }
            HandshakeProcessResult::Completed {
                response_bytes,
                remaining_bytes,
            } => {
                send_bytes(&out, response_bytes).await?;
                break remaining_bytes;
            }
        }
    };
    let (rtmp, first) = ServerSession::new(ServerSessionConfig::new())?;
    let mut session = Session {
        hub,
        protocol,
        rtmp,
        screen: Screen::new(),
        input_unpublished: 0,
        out,
        publishing: None,
        playing: None,
    };
    session.handle(first).await?;
    session.input(&after_handshake).await?;
    loop {
        // Players send little (acknowledgements); publishers send all the time.
        let limit = if session.playing.is_some() {
            None
        } else {
            Some(idle)
        };
        let woken = tokio::select! {
            read = read_some(reader, &mut buf, limit) => Woken::Read(read),
            tag = next_tag(&mut session.playing) => Woken::Tag(tag),
        };
        match woken {
            Woken::Read(read) => {
                read?;
                session.input(&buf).await?;
            }
            Woken::Tag(Some(tag)) => session.play_tag(&tag).await?,
            Woken::Tag(None) => {
                // The stream ended (or left this player behind): say so, then close.
                if let Some(playing) = session.playing.take() {
                    if let Ok(packet) = session.rtmp.finish_playing(playing.stream_id) {
                        session.send(packet).await?;
                    }
                }
                return Err(Closed::StreamEnded);
            }
        }
    }
}

enum Woken {
    Read(Result<(), Closed>),
    Tag(Option<FlvTag>),
}

/// The next tag of the stream played; never, when nothing is played.
async fn next_tag(playing: &mut Option<Playing>) -> Option<FlvTag> {
    match playing {
        Some(playing) => playing.viewer.next().await,
        None => std::future::pending().await,
    }
}

async fn send_bytes(out: &mpsc::Sender<Bytes>, bytes: Vec<u8>) -> Result<(), Closed> {
    if bytes.is_empty() {
        return Ok(());
    }
    out.send(Bytes::from(bytes))
        .await
        .map_err(|_| Closed::WriterGone)
}

struct Publishing {
    publisher: StreamPublisher,
    /// The timestamp of the last media tag, given to metadata changed mid-stream.
    last_timestamp: u32,
}

struct Playing {
    viewer: StreamViewer,
    clock: ViewerClock,
    /// The RTMP message stream the player plays on.
    stream_id: u32,
    /// Last timestamps sent per chunk stream: rml_rtmp writes timestamp deltas, which must
    /// not go backwards.
    last_video: u32,
    last_audio: u32,
}

struct Session<'h> {
    hub: &'h MediaHub,
    protocol: &'static str,
    rtmp: ServerSession,
    screen: Screen,
    /// Bytes received while not publishing.
    input_unpublished: usize,
    out: mpsc::Sender<Bytes>,
    publishing: Option<Publishing>,
    playing: Option<Playing>,
}

impl Session<'_> {
    async fn input(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        if bytes.is_empty() {
            return Ok(());
        }
        if self.publishing.is_none() {
            self.input_unpublished = self.input_unpublished.saturating_add(bytes.len());
            if self.input_unpublished > MAX_INPUT_UNPUBLISHED {
                return Err(Closed::Protocol(format!(
                    "more than {MAX_INPUT_UNPUBLISHED} bytes without publishing"
                )));
            }
        }
        self.screen.check(bytes)?;
        // rml_rtmp indexes some messages without checking their length (a bare
        // `@setDataFrame`): such a panic ends this connection only.
        let results = catch_unwind(AssertUnwindSafe(|| self.rtmp.handle_input(bytes)))
            .map_err(|_| Closed::Protocol("malformed message".to_string()))??;
        self.handle(results).await
    }

    async fn handle(&mut self, results: Vec<ServerSessionResult>) -> Result<(), Closed> {
        for result in results {
            match result {
                ServerSessionResult::OutboundResponse(packet) => self.send(packet).await?,
                ServerSessionResult::RaisedEvent(event) => self.event(event).await?,
                ServerSessionResult::UnhandleableMessageReceived(_) => {}
            }
        }
        Ok(())
    }

    /// Sends the replies of an accept or reject (they raise no events).
    async fn send_all(&mut self, results: Vec<ServerSessionResult>) -> Result<(), Closed> {
        for result in results {
            if let ServerSessionResult::OutboundResponse(packet) = result {
                self.send(packet).await?;
            }
        }
        Ok(())
    }

    async fn send(&mut self, packet: Packet) -> Result<(), Closed> {
        send_bytes(&self.out, packet.bytes).await
    }

    async fn event(&mut self, event: ServerSessionEvent) -> Result<(), Closed> {
        match event {
            ServerSessionEvent::ConnectionRequested { request_id, .. } => {
                let accepted = self.rtmp.accept_request(request_id)?;
                self.send_all(accepted).await
            }
            ServerSessionEvent::PublishStreamRequested {
                request_id,
                app_name,
                stream_key,
                ..
            } => self.publish(request_id, &app_name, &stream_key).await,
            ServerSessionEvent::PlayStreamRequested {
                request_id,
                app_name,
                stream_key,
                stream_id,
                ..
            } => {
                self.play(request_id, &app_name, &stream_key, stream_id)
                    .await
            }
            ServerSessionEvent::StreamMetadataChanged { metadata, .. } => {
                let Some(publishing) = &mut self.publishing else {
                    return Ok(());
                };
                let tag = FlvTag {
                    kind: TagKind::Script,
                    timestamp: publishing.last_timestamp,
                    body: metadata_body(&metadata),
                };
                push(publishing, tag)
            }
            ServerSessionEvent::VideoDataReceived {
                data, timestamp, ..
            } => self.push_media(TagKind::Video, data, timestamp),
            ServerSessionEvent::AudioDataReceived {
                data, timestamp, ..
            } => self.push_media(TagKind::Audio, data, timestamp),
            ServerSessionEvent::PublishStreamFinished { .. } => {
                self.publishing = None;
                Ok(())
            }
            ServerSessionEvent::PlayStreamFinished { .. } => {
                self.playing = None;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn push_media(&mut self, kind: TagKind, body: Bytes, at: RtmpTimestamp) -> Result<(), Closed> {
        let Some(publishing) = &mut self.publishing else {
            return Ok(());
        };
        if body.is_empty() {
            return Ok(());
        }
        publishing.last_timestamp = at.value;
        let tag = FlvTag {
            kind,
            timestamp: at.value,
            body,
        };
        push(publishing, tag)
    }

    /// Refuses an outstanding publish or play with `reason`; the connection then closes.
    async fn refuse(&mut self, request_id: u32, code: &str, reason: String) -> Closed {
        if let Ok(rejected) = self.rtmp.reject_request(request_id, code, &reason) {
            let _ = self.send_all(rejected).await;
        }
        Closed::Refused(reason)
    }

    /// Refuses the request for `key` with the status code and text of `refusal`.
    async fn refuse_stream(
        &mut self,
        request_id: u32,
        key: StreamKey,
        refusal: &Refusal,
        publishing: bool,
    ) -> Closed {
        let code = refusal_code(refusal, publishing);
        self.refuse(request_id, code, format!("{key}: {refusal}"))
            .await
    }

    async fn publish(&mut self, request_id: u32, app: &str, name: &str) -> Result<(), Closed> {
        const BAD_NAME: &str = "NetStream.Publish.BadName";
        if self.publishing.is_some() || self.playing.is_some() {
            let reason = "one stream per connection".to_string();
            return Err(self.refuse(request_id, BAD_NAME, reason).await);
        }
        let (name, query) = split_query(name);
        let Some(key) = StreamKey::from_rtmp(app, name) else {
            let reason = format!("{app}/{name}: not a stream name");
            return Err(self.refuse(request_id, BAD_NAME, reason).await);
        };
        let publisher = match may_publish(self.hub, key, query).await {
            Ok(()) => self.hub.publish(key, Source::Rtmp).await,
            Err(refusal) => Err(refusal),
        };
        let publisher = match publisher {
            Ok(publisher) => publisher,
            Err(refusal) => {
                return Err(self.refuse_stream(request_id, key, &refusal, true).await);
            }
        };
        let accepted = self.rtmp.accept_request(request_id)?;
        self.publishing = Some(Publishing {
            publisher,
            last_timestamp: 0,
        });
        tracing::info!(stream = %key, protocol = self.protocol, "rtmp publishing");
        self.send_all(accepted).await
    }

    async fn play(
        &mut self,
        request_id: u32,
        app: &str,
        name: &str,
        stream_id: u32,
    ) -> Result<(), Closed> {
        const NOT_FOUND: &str = "NetStream.Play.StreamNotFound";
        if self.publishing.is_some() || self.playing.is_some() {
            let reason = "one stream per connection".to_string();
            return Err(self
                .refuse(request_id, "NetStream.Play.Failed", reason)
                .await);
        }
        let (name, _) = split_query(name);
        let Some(key) = StreamKey::from_rtmp(app, name) else {
            let reason = format!("{app}/{name}: not a stream name");
            return Err(self.refuse(request_id, NOT_FOUND, reason).await);
        };
        let (viewer, start) = match self.hub.watch(key).await {
            Ok(started) => started,
            Err(refusal) => {
                return Err(self.refuse_stream(request_id, key, &refusal, false).await);
            }
        };
        let accepted = self.rtmp.accept_request(request_id)?;
        self.send_all(accepted).await?;
        metrics::counter!("iothub_media_viewers_started_total", "protocol" => self.protocol)
            .increment(1);
        self.playing = Some(Playing {
            viewer,
            clock: ViewerClock::new(&start.tags),
            stream_id,
            last_video: 0,
            last_audio: 0,
        });
        for tag in &start.tags {
            self.play_tag(tag).await?;
        }
        Ok(())
    }

    /// One of the stream's tags to the player, on the player's timeline.
    async fn play_tag(&mut self, tag: &FlvTag) -> Result<(), Closed> {
        let Some(playing) = self.playing.as_mut() else {
            return Ok(());
        };
        let tag = playing.clock.retime(tag);
        let packet = match tag.kind {
            TagKind::Video => {
                playing.last_video = playing.last_video.max(tag.timestamp);
                let at = RtmpTimestamp::new(playing.last_video);
                self.rtmp
                    .send_video_data(playing.stream_id, tag.body, at, false)?
            }
            TagKind::Audio => {
                playing.last_audio = playing.last_audio.max(tag.timestamp);
                let at = RtmpTimestamp::new(playing.last_audio);
                self.rtmp
                    .send_audio_data(playing.stream_id, tag.body, at, false)?
            }
            TagKind::Script => match metadata_of(&tag.body) {
                Some(metadata) => self.rtmp.send_metadata(playing.stream_id, &metadata)?,
                None => return Ok(()),
            },
        };
        self.send(packet).await
    }
}

fn push(publishing: &mut Publishing, tag: FlvTag) -> Result<(), Closed> {
    if publishing.publisher.push(tag) {
        Ok(())
    } else {
        // Another publisher took the stream over, or the node is stopping.
        Err(Closed::StreamEnded)
    }
}

/// The RTMP status code a refusal is sent with.
fn refusal_code(refusal: &Refusal, publishing: bool) -> &'static str {
    match (refusal, publishing) {
        (Refusal::NotFound, false) => "NetStream.Play.StreamNotFound",
        (_, false) => "NetStream.Play.Failed",
        (Refusal::Forbidden | Refusal::DeviceOffline, true) => "NetStream.Publish.Denied",
        (_, true) => "NetStream.Publish.Failed",
    }
}

/// A stream name and its `?query` (FFmpeg leaves the URL's query in the stream name).
fn split_query(name: &str) -> (&str, Option<&str>) {
    match name.split_once('?') {
        Some((name, query)) => (name, Some(query)),
        None => (name, None),
    }
}

/// Publishing rights: the device is online on this node, and when the node has a publish
/// secret the query carries `sign=<hex HMAC-SHA256(secret, key)>`.
async fn may_publish(hub: &MediaHub, key: StreamKey, query: Option<&str>) -> Result<(), Refusal> {
    let secret = &hub.config().publish_secret;
    if !secret.is_empty() && !signed(secret, &key, query) {
        return Err(Refusal::Forbidden);
    }
    if !hub.signals().online(key.imei).await {
        return Err(Refusal::DeviceOffline);
    }
    Ok(())
}

/// The `sign` a publisher of `key` puts in its URL's query: lowercase hex of
/// HMAC-SHA256(secret, the key as it prints, `live/1/<imei>`).
pub fn publish_sign(secret: &str, key: &StreamKey) -> String {
    let secret = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hex::encode(hmac::sign(&secret, key.to_string().as_bytes()).as_ref())
}

/// Whether `query` carries the right sign for `key`, compared in constant time.
fn signed(secret: &str, key: &StreamKey, query: Option<&str>) -> bool {
    let Some(sign) = query.and_then(|q| q.split('&').find_map(|p| p.strip_prefix("sign="))) else {
        return false;
    };
    let Ok(sign) = hex::decode(sign) else {
        return false;
    };
    let secret = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    hmac::verify(&secret, key.to_string().as_bytes(), &sign).is_ok()
}

/// An onMetaData script tag body from what a publisher's `@setDataFrame` said (rml_rtmp
/// gives the fields it knows, not the message).
fn metadata_body(metadata: &StreamMetadata) -> Bytes {
    flv::on_metadata(&flv::Metadata {
        width: metadata.video_width,
        height: metadata.video_height,
        framerate: metadata.video_frame_rate.map(f64::from),
        video_codec_id: metadata.video_codec_id.and_then(|id| u8::try_from(id).ok()),
        audio_codec_id: metadata.audio_codec_id.and_then(|id| u8::try_from(id).ok()),
        audio_sample_rate: metadata.audio_sample_rate,
        stereo: metadata.audio_is_stereo,
    })
}

/// What an onMetaData script tag body says, as rml_rtmp sends it to a player.
fn metadata_of(body: &[u8]) -> Option<StreamMetadata> {
    if amf0_nesting(body) > MAX_AMF_NESTING {
        return None;
    }
    let mut values = rml_amf0::deserialize(&mut std::io::Cursor::new(body))
        .ok()?
        .into_iter();
    if values.next()?.get_string()? != "onMetaData" {
        return None;
    }
    let mut metadata = StreamMetadata::new();
    metadata.apply_metadata_values(values.next()?.get_object_properties()?);
    Some(metadata)
}

/// A second reading of the peer's chunk stream, ahead of the session's, that refuses AMF0
/// messages nested deeper than [`MAX_AMF_NESTING`]: rml_amf0 recurses once per level, and
/// a message of nested objects would otherwise overflow the stack.
struct Screen {
    chunks: ChunkDeserializer,
}

impl Screen {
    fn new() -> Screen {
        Screen {
            chunks: ChunkDeserializer::new(),
        }
    }

    fn check(&mut self, bytes: &[u8]) -> Result<(), Closed> {
        let mut input = bytes;
        loop {
            let next = catch_unwind(AssertUnwindSafe(|| self.chunks.get_next_message(input)))
                .map_err(|_| Closed::Protocol("malformed chunk".to_string()))?
                .map_err(|e| Closed::Protocol(e.to_string()))?;
            let Some(message) = next else {
                return Ok(());
            };
            input = &[];
            let amf = match message.type_id {
                1 => {
                    // The session follows the peer's chunk size; so must this reading.
                    if let Ok(RtmpMessage::SetChunkSize { size }) = message.to_rtmp_message() {
                        self.chunks
                            .set_max_chunk_size(size as usize)
                            .map_err(|e| Closed::Protocol(e.to_string()))?;
                    }
                    continue;
                }
                15 | 18 | 20 => &message.data[..],
                // AMF0 in an AMF3 command, after a 0 byte (as rml_rtmp reads it).
                17 => message.data.strip_prefix(&[0]).unwrap_or(&message.data),
                _ => continue,
            };
            if amf0_nesting(amf) > MAX_AMF_NESTING {
                return Err(Closed::Protocol("AMF0 nested too deep".to_string()));
            }
        }
    }
}

/// How deep the AMF0 values in `data` nest (objects, ECMA and strict arrays), read as
/// rml_amf0 reads them, without recursion; reading stops where rml_amf0 would stop.
fn amf0_nesting(data: &[u8]) -> usize {
    enum Frame {
        Properties,
        Elements(u32),
    }
    let u16_at = |at: usize| -> Option<usize> {
        let b = data.get(at..at.checked_add(2)?)?;
        Some(usize::from(u16::from_be_bytes([b[0], b[1]])))
    };
    let u32_at = |at: usize| -> Option<u32> {
        let b = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut deepest = 0;
    let mut at = 0usize;
    loop {
        match stack.last_mut() {
            Some(Frame::Properties) => {
                let Some(len) = u16_at(at) else {
                    return deepest;
                };
                at += 2;
                if len == 0 {
                    if data.get(at) != Some(&9) {
                        return deepest;
                    }
                    at += 1;
                    stack.pop();
                    continue;
                }
                at = at.saturating_add(len);
            }
            Some(Frame::Elements(0)) => {
                stack.pop();
                continue;
            }
            Some(Frame::Elements(left)) => *left -= 1,
            None => {}
        }
        let Some(&marker) = data.get(at) else {
            return deepest;
        };
        at += 1;
        match marker {
            0 => at = at.saturating_add(8),
            1 => at = at.saturating_add(1),
            2 => {
                let Some(len) = u16_at(at) else {
                    return deepest;
                };
                at = at.saturating_add(2 + len);
            }
            3 => stack.push(Frame::Properties),
            5 | 6 => {}
            8 => {
                at = at.saturating_add(4);
                stack.push(Frame::Properties);
            }
            10 => {
                let Some(count) = u32_at(at) else {
                    return deepest;
                };
                at += 4;
                stack.push(Frame::Elements(count));
            }
            // The object end marker ends a strict array early; anywhere else rml_amf0 stops.
            9 if matches!(stack.last(), Some(Frame::Elements(_))) => {
                stack.pop();
            }
            _ => return deepest,
        }
        deepest = deepest.max(stack.len());
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::process::Output;

    use std::collections::HashMap;

    use iothub::imei::Imei;
    use ractor::{Actor, ActorProcessingErr, ActorRef};
    use rml_rtmp::chunk_io::ChunkSerializer;
    use rml_rtmp::messages::MessagePayload;
    use rml_rtmp::rml_amf0::Amf0Value;
    use rml_rtmp::sessions::{
        ClientSession, ClientSessionConfig, ClientSessionEvent, ClientSessionResult,
    };
    use tokio::net::TcpStream;
    use tokio::process::Command;

    use super::*;
    use crate::config::Config;
    use crate::media::signals::DeviceSignals;

    const IMEI: &str = "868120303960873";

    // ---- pure parts ----

    #[test]
    fn the_query_is_cut_from_the_stream_name() {
        assert_eq!(
            split_query("1/868120303960873?sign=ab&x=1"),
            ("1/868120303960873", Some("sign=ab&x=1"))
        );
        assert_eq!(
            split_query("1/868120303960873"),
            ("1/868120303960873", None)
        );
    }

    #[test]
    fn the_sign_is_the_hmac_sha256_of_the_key_in_lowercase_hex() {
        let key = StreamKey::parse(&format!("live/1/{IMEI}")).unwrap();
        // Independently: printf 'live/1/868120303960873' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            publish_sign("s3cret", &key),
            openssl_hmac("s3cret", &format!("live/1/{IMEI}"))
        );
    }

    #[test]
    fn only_the_right_sign_signs() {
        let key = StreamKey::parse(&format!("live/1/{IMEI}")).unwrap();
        let other = StreamKey::parse(&format!("live/2/{IMEI}")).unwrap();
        let sign = publish_sign("s3cret", &key);
        assert!(signed("s3cret", &key, Some(&format!("a=1&sign={sign}"))));
        assert!(!signed("s3cret", &other, Some(&format!("sign={sign}"))));
        assert!(!signed("other", &key, Some(&format!("sign={sign}"))));
        assert!(!signed("s3cret", &key, Some("sign=zz")));
        assert!(!signed("s3cret", &key, None));
    }

    #[test]
    fn metadata_survives_the_script_tag_it_becomes() {
        let mut metadata = StreamMetadata::new();
        metadata.video_width = Some(640);
        metadata.video_height = Some(360);
        metadata.video_codec_id = Some(7);
        metadata.video_frame_rate = Some(25.0);
        metadata.audio_codec_id = Some(10);
        metadata.audio_sample_rate = Some(44100);
        metadata.audio_is_stereo = Some(false);
        assert_eq!(metadata_of(&metadata_body(&metadata)), Some(metadata));
    }

    #[test]
    fn a_script_tag_body_is_onmetadata_and_an_ecma_array() {
        let body = metadata_body(&StreamMetadata::new());
        // AMF0 string marker, length 10, "onMetaData", an ECMA array of 0 entries, its end.
        assert_eq!(&body[..], b"\x02\x00\x0aonMetaData\x08\0\0\0\0\0\0\x09");
    }

    #[test]
    fn amf0_nesting_counts_objects_and_arrays() {
        // "onMetaData", {a: [ {} ]}: object, strict array, object.
        let values = vec![
            Amf0Value::Utf8String("onMetaData".to_string()),
            Amf0Value::Object(HashMap::from([(
                "a".to_string(),
                Amf0Value::StrictArray(vec![Amf0Value::Object(HashMap::new())]),
            )])),
        ];
        let bytes = rml_amf0::serialize(&values).unwrap();
        assert_eq!(amf0_nesting(&bytes), 3);
    }

    #[test]
    fn amf0_nesting_reads_deep_objects_without_recursing() {
        let deep = [0x03, 0x00, 0x01, b'a'].repeat(200_000);
        assert_eq!(amf0_nesting(&deep), 200_000);
    }

    #[test]
    fn amf0_nesting_of_flat_values_is_zero() {
        let values = vec![
            Amf0Value::Utf8String("connect".to_string()),
            Amf0Value::Number(1.0),
            Amf0Value::Null,
        ];
        assert_eq!(amf0_nesting(&rml_amf0::serialize(&values).unwrap()), 0);
    }

    #[test]
    fn refusals_map_to_rtmp_status_codes() {
        assert_eq!(
            refusal_code(&Refusal::NotFound, false),
            "NetStream.Play.StreamNotFound"
        );
        assert_eq!(
            refusal_code(&Refusal::DeviceOffline, true),
            "NetStream.Publish.Denied"
        );
        assert_eq!(
            refusal_code(&Refusal::TooManyStreams, true),
            "NetStream.Publish.Failed"
        );
    }

    fn openssl_hmac(secret: &str, text: &str) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac", secret, "-r"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl is needed by this test (Debian: apt-get install openssl)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    // ---- a server with real clients ----

    struct Parent;

    impl Actor for Parent {
        type Msg = ();
        type State = ();
        type Arguments = ();

        async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    struct Server {
        addr: SocketAddr,
        hub: MediaHub,
        task: tokio::task::JoinHandle<()>,
        parent: ActorRef<()>,
        _one_at_a_time: tokio::sync::MutexGuard<'static, ()>,
    }

    /// The hub's supervisor has a process-wide name, so one server at a time (which also
    /// keeps two FFmpeg encoders from sharing the CPU).
    static ONE_SERVER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
            self.parent.stop(None);
        }
    }

    /// An RTMP listener on a free port of 127.0.0.1 (RTMPS with `tls`).
    async fn server(
        signals: DeviceSignals,
        secret: &str,
        tls: Option<Arc<ReloadingTls>>,
    ) -> Server {
        server_with(signals, tls, IDLE_TIMEOUT, |media| {
            media.publish_secret = secret.to_string()
        })
        .await
    }

    async fn server_with(
        signals: DeviceSignals,
        tls: Option<Arc<ReloadingTls>>,
        idle: Duration,
        configure: impl FnOnce(&mut crate::config::MediaConfig),
    ) -> Server {
        let config = Config::from_toml_str("", &|name: &str| {
            (name == "apiToken").then(|| "secret".to_string())
        })
        .expect("the embedded configuration loads");
        let mut media = config.media;
        configure(&mut media);
        let one_at_a_time = ONE_SERVER.lock().await;
        let (parent, _) = Actor::spawn(None, Parent, ()).await.unwrap();
        let mut tries = 0;
        let hub = loop {
            // The previous test's supervisor may still be stopping.
            match MediaHub::start(media.clone(), parent.get_cell(), signals.clone(), None).await {
                Ok(hub) => break hub,
                Err(e) if tries < 100 => {
                    tries += 1;
                    tracing::debug!(error = %e, "media supervisor not started yet");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("the media hub did not start: {e}"),
            }
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(serve_with(listener, hub.clone(), tls, idle));
        Server {
            addr,
            hub,
            task,
            parent,
            _one_at_a_time: one_at_a_time,
        }
    }

    fn online() -> DeviceSignals {
        DeviceSignals::online_for_tests(vec![Imei::parse(IMEI).unwrap()])
    }

    fn need(tool: &str) {
        let found = std::process::Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            found,
            "{tool} is needed by the RTMP tests and is not installed (Debian: apt-get install ffmpeg)"
        );
    }

    /// Runs `program` with `args`, killed after `limit`.
    async fn run(program: &str, args: &[&str], limit: Duration) -> Output {
        let child = Command::new(program)
            .args(args)
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .output();
        match tokio::time::timeout(limit, child).await {
            Ok(output) => output.unwrap_or_else(|e| panic!("{program} did not run: {e}")),
            Err(_) => panic!("{program} {args:?} did not finish within {limit:?}"),
        }
    }

    /// FFmpeg publishing H.264 640x360 at 25 fps and AAC for `seconds`, in real time.
    async fn publish(url: &str, seconds: u32) -> Output {
        let seconds = seconds.to_string();
        let args = [
            "-hide_banner",
            "-v",
            "error",
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=640x360:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=44100",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-tune",
            "zerolatency",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "50",
            "-c:a",
            "aac",
            "-b:a",
            "64k",
            "-t",
            &seconds,
            "-f",
            "flv",
            url,
        ];
        run("ffmpeg", &args, Duration::from_secs(60)).await
    }

    fn stderr(output: &Output) -> String {
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    /// Waits until `hub` has a stream (the publisher got through).
    async fn stream_appears(hub: &MediaHub) {
        for _ in 0..100 {
            if hub.stream_count() > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no stream within 5 s of starting the publisher");
    }

    /// Publishes for 8 s over `scheme`, and meanwhile probes and decodes 50 frames.
    async fn publish_probe_and_play(server: &Server, scheme: &str) {
        let url = format!("{scheme}://{}/live/1/{IMEI}", server.addr);
        let publisher = tokio::spawn({
            let url = url.clone();
            async move { publish(&url, 8).await }
        });
        stream_appears(&server.hub).await;
        // A second for the publisher's first key frame to reach the GOP cache.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let probe_args = [
            "-v",
            "error",
            "-rw_timeout",
            "5000000",
            "-show_entries",
            "stream=codec_type,codec_name,width,height",
            "-of",
            "json",
            &url,
        ];
        let play_args = [
            "-v",
            "error",
            "-rw_timeout",
            "5000000",
            "-i",
            &url,
            "-frames:v",
            "50",
            "-f",
            "null",
            "-",
            "-progress",
            "pipe:1",
        ];
        let probe = run("ffprobe", &probe_args, Duration::from_secs(30));
        let play = run("ffmpeg", &play_args, Duration::from_secs(30));
        let (probe, play) = tokio::join!(probe, play);
        assert!(probe.status.success(), "ffprobe failed: {}", stderr(&probe));
        let probed: serde_json::Value = serde_json::from_slice(&probe.stdout).unwrap();
        let streams = probed["streams"].as_array().cloned().unwrap_or_default();
        let video = streams
            .iter()
            .find(|s| s["codec_type"] == "video")
            .unwrap_or_else(|| panic!("no video stream in {probed}"));
        assert_eq!(video["codec_name"], "h264", "{probed}");
        assert_eq!(video["width"], 640, "{probed}");
        assert_eq!(video["height"], 360, "{probed}");
        let audio = streams
            .iter()
            .find(|s| s["codec_type"] == "audio")
            .unwrap_or_else(|| panic!("no audio stream in {probed}"));
        assert_eq!(audio["codec_name"], "aac", "{probed}");
        assert!(play.status.success(), "ffmpeg failed: {}", stderr(&play));
        let progress = String::from_utf8_lossy(&play.stdout);
        assert!(
            progress.lines().any(|l| l == "frame=50"),
            "ffmpeg did not decode 50 frames: {progress}"
        );
        let published = publisher.await.unwrap();
        assert!(
            published.status.success(),
            "the publisher failed: {}",
            stderr(&published)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ffmpeg_publishes_and_ffmpeg_plays_h264_and_aac() {
        need("ffmpeg");
        need("ffprobe");
        let server = server(online(), "", None).await;
        publish_probe_and_play(&server, "rtmp").await;
    }

    /// A self-signed certificate and its key in one PEM file, made by the openssl CLI.
    fn self_signed(dir: &std::path::Path) -> std::path::PathBuf {
        let made = std::process::Command::new("openssl")
            .current_dir(dir)
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "key.pem",
                "-out",
                "cert.pem",
            ])
            .output()
            .expect("openssl is needed by the RTMPS test (Debian: apt-get install openssl)");
        assert!(
            made.status.success(),
            "openssl failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
        let mut pem = std::fs::read(dir.join("cert.pem")).unwrap();
        pem.extend(std::fs::read(dir.join("key.pem")).unwrap());
        let path = dir.join("server.pem");
        std::fs::write(&path, pem).unwrap();
        path
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ffmpeg_publishes_and_plays_over_rtmps() {
        need("ffmpeg");
        need("ffprobe");
        let dir = tempfile::tempdir().unwrap();
        let tls = ReloadingTls::start(crate::tls::TlsSettings {
            certificate: self_signed(dir.path()),
            password: String::new(),
        })
        .expect("the self-signed certificate loads");
        let server = server(online(), "", Some(tls)).await;
        publish_probe_and_play(&server, "rtmps").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_for_an_offline_device_is_refused() {
        need("ffmpeg");
        let server = server(DeviceSignals::none(), "", None).await;
        let url = format!("rtmp://{}/live/1/{IMEI}", server.addr);
        let published = publish(&url, 1).await;
        assert!(!published.status.success(), "an offline device published");
        assert!(
            stderr(&published).contains("not online"),
            "the refusal does not say why: {}",
            stderr(&published)
        );
        assert_eq!(server.hub.stream_count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_play_of_a_stream_nobody_publishes_is_refused() {
        need("ffmpeg");
        let server = server_with(online(), None, IDLE_TIMEOUT, |media| {
            media.start_timeout = Duration::from_secs(2)
        })
        .await;
        let url = format!("rtmp://{}/live/1/{IMEI}", server.addr);
        let play = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-rw_timeout",
                "5000000",
                "-i",
                &url,
                "-f",
                "null",
                "-",
            ],
            Duration::from_secs(30),
        )
        .await;
        assert!(!play.status.success(), "played a stream nobody publishes");
        assert!(
            stderr(&play).contains("did not start streaming in time"),
            "the refusal does not say why: {}",
            stderr(&play)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_a_secret_only_the_right_sign_publishes() {
        need("ffmpeg");
        let secret = "s3cret";
        let server = server(online(), secret, None).await;
        let key = StreamKey::parse(&format!("live/1/{IMEI}")).unwrap();
        let url = format!("rtmp://{}/live/1/{IMEI}", server.addr);

        let unsigned = publish(&url, 1).await;
        assert!(!unsigned.status.success(), "published without a sign");
        assert!(
            stderr(&unsigned).contains("not allowed"),
            "{}",
            stderr(&unsigned)
        );

        let wrong = publish_sign("other", &key);
        let wrongly_signed = publish(&format!("{url}?sign={wrong}"), 1).await;
        assert!(
            !wrongly_signed.status.success(),
            "published with a wrong sign"
        );

        let right = publish_sign(secret, &key);
        let signed = publish(&format!("{url}?sign={right}"), 1).await;
        assert!(
            signed.status.success(),
            "the right sign was refused: {}",
            stderr(&signed)
        );
    }

    /// An RTMP client connection past the handshake (rml_rtmp's client side).
    async fn handshaken(addr: SocketAddr) -> TcpStream {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        let mut client = Handshake::new(PeerType::Client);
        let c0c1 = client.generate_outbound_p0_and_p1().unwrap();
        socket.write_all(&c0c1).await.unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed during the handshake");
            match client.process_bytes(&buf[..n]).unwrap() {
                HandshakeProcessResult::InProgress { response_bytes } => {
                    socket.write_all(&response_bytes).await.unwrap();
                }
                HandshakeProcessResult::Completed { response_bytes, .. } => {
                    socket.write_all(&response_bytes).await.unwrap();
                    return socket;
                }
            }
        }
    }

    /// Sends AMF0 data messages and expects the server to close the connection.
    async fn closes_on(addr: SocketAddr, messages: &[Vec<u8>]) {
        let mut socket = handshaken(addr).await;
        let mut chunks = ChunkSerializer::new();
        for data in messages {
            let payload = MessagePayload {
                timestamp: RtmpTimestamp::new(0),
                type_id: 18,
                message_stream_id: 0,
                data: Bytes::from(data.clone()),
            };
            let packet = chunks.serialize(&payload, true, false).unwrap();
            if socket.write_all(&packet.bytes).await.is_err() {
                break;
            }
        }
        let mut sink = vec![0u8; 65536];
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match socket.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server kept the connection open");
    }

    #[tokio::test]
    async fn a_message_rml_rtmp_cannot_read_closes_only_its_connection() {
        let server = server(online(), "", None).await;
        // `@setDataFrame` alone: rml_rtmp indexes the value that should follow.
        let bare =
            rml_amf0::serialize(&vec![Amf0Value::Utf8String("@setDataFrame".to_string())]).unwrap();
        closes_on(server.addr, &[bare]).await;
        // 100 000 nested objects: rml_amf0 would recurse as deep.
        closes_on(server.addr, &[[0x03, 0x00, 0x01, b'a'].repeat(100_000)]).await;
        // The server goes on.
        handshaken(server.addr).await;
    }

    #[tokio::test]
    async fn a_connection_that_does_not_publish_may_send_a_megabyte() {
        let server = server(online(), "", None).await;
        // Well-formed data messages nobody asked for: a 60 000-byte AMF0 string each.
        let mut text = vec![0x02];
        text.extend_from_slice(&60_000u16.to_be_bytes());
        text.extend(std::iter::repeat_n(b'x', 60_000));
        let messages = vec![text; MAX_INPUT_UNPUBLISHED / 60_000 + 2];
        closes_on(server.addr, &messages).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_player_that_stops_reading_is_closed_once_a_write_waits_too_long() {
        let idle = Duration::from_secs(1);
        // The stream's own lag limit must not be what closes the player.
        let server = server_with(online(), None, idle, |media| {
            media.viewer_lag_limit = Duration::from_secs(600)
        })
        .await;
        let key = StreamKey::parse(&format!("live/1/{IMEI}")).unwrap();
        let mut publisher = server.hub.publish(key, Source::Rtmp).await.unwrap();
        let video = |timestamp: u32, body: Vec<u8>| FlvTag {
            kind: TagKind::Video,
            timestamp,
            body: Bytes::from(body),
        };
        // An AVC sequence header, then a key frame: a viewer can start.
        assert!(publisher.push(video(0, vec![0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1e, 0xff])));
        let mut frame = vec![0x17, 1, 0, 0, 0];
        frame.resize(256 * 1024, 0);
        assert!(publisher.push(video(0, frame.clone())));

        let mut socket = handshaken(server.addr).await;
        let (mut client, _) = ClientSession::new(ClientSessionConfig::new()).unwrap();
        let mut pending = vec![client.request_connection("live".to_string()).unwrap()];
        let mut buf = vec![0u8; 65536];
        let mut playing = false;
        while !playing {
            for result in pending.drain(..) {
                match result {
                    ClientSessionResult::OutboundResponse(packet) => {
                        socket.write_all(&packet.bytes).await.unwrap()
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::ConnectionRequestAccepted,
                    ) => {
                        socket
                            .write_all(&playback(&mut client, &format!("1/{IMEI}")))
                            .await
                            .unwrap();
                    }
                    ClientSessionResult::RaisedEvent(
                        ClientSessionEvent::PlaybackRequestAccepted,
                    ) => {
                        playing = true;
                    }
                    _ => {}
                }
            }
            if playing {
                break;
            }
            let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
                .await
                .expect("the server answered")
                .unwrap();
            assert!(n > 0, "the server closed before playing");
            pending = client.handle_input(&buf[..n]).unwrap();
        }

        // The player reads no more; more frames than the socket buffers hold go out.
        for i in 1..=80u32 {
            let mut tag = video(i * 40, frame.clone());
            if i % 10 != 0 {
                let mut body = frame.clone();
                body[0] = 0x27;
                tag.body = Bytes::from(body);
            }
            publisher.push(tag);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Past the write timeout, reading finds the end of what was sent, then the close.
        tokio::time::sleep(idle * 3).await;
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match socket.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "a player that stopped reading stayed connected"
        );
        drop(publisher);
    }

    fn playback(client: &mut ClientSession, name: &str) -> Vec<u8> {
        match client.request_playback(name.to_string()).unwrap() {
            ClientSessionResult::OutboundResponse(packet) => packet.bytes,
            other => panic!("rml_rtmp's client did not ask to play: {other:?}"),
        }
    }
}
