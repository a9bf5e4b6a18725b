//! A simulated dashcam's JT/T 1078 streams: what [`DvrMedia`] does when a terminal accepts
//! a 0x9101 (live) or 0x9201 (playback).
//!
//! A media server is loaded by what cameras send it: packets of at most ~950 body bytes,
//! frames cut into first/middle/last subpackages, audio interleaved with video by time, the
//! 2016 or 2019 SIM layout, sometimes a HiSilicon header on each audio frame. A real H.264
//! file (an Annex-B elementary stream, as FFmpeg writes it) is split into access units once,
//! and every stream sends them in a loop at a configured frame rate, so what the server
//! decodes and muxes is real video that a player can show. Every stream ends by itself: at
//! the platform's close (0x9102 / 0x9202), when the server closes the connection, after a
//! configured time or number of bytes.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use iothub::codec::jt808::{LiveControl, Phone, PlaybackControl};
use iothub::imei::Imei;
use iothub::media::annexb::nal_units;
use iothub::media::jt1078::{hisilicon_prefixed, DataType, Layout, Packetizer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::dial::dial;
use crate::media::{LiveMedia, LiveStream, PlaybackStream};

/// The largest source file read (video or audio).
pub const MAX_SOURCE_BYTES: u64 = 256 * 1024 * 1024;

/// Payload types (JT/T 1078 table 12).
pub const PT_H264: u8 = 98;
pub const PT_G711A: u8 = 6;

/// G.711A at 8 kHz: 320 bytes are 40 ms, the frame length dashcams report in 0x1003.
pub const AUDIO_FRAME_BYTES: usize = 320;
const AUDIO_FRAME_MS: f64 = 40.0;

/// Finished streams kept for the report (the counters cover all of them).
pub const MAX_STREAM_RECORDS: usize = 10_000;

/// One H.264 access unit (one picture) in Annex-B form, 4-byte start codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessUnit {
    pub data: Bytes,
    /// Holds an IDR slice: sent with data type I frame.
    pub key: bool,
}

/// Reads one unsigned exp-Golomb value (ue(v)) from the start of `rbsp`. Emulation
/// prevention bytes are not removed: they can only follow two zero bytes, which a value
/// small enough to be a macroblock address never begins with.
fn read_ue(rbsp: &[u8]) -> Option<u32> {
    let bit = |n: usize| rbsp.get(n / 8).map(|b| (b >> (7 - n % 8)) & 1);
    let mut zeros = 0;
    while bit(zeros)? == 0 {
        zeros += 1;
        if zeros > 31 {
            return None;
        }
    }
    let mut value: u64 = 0;
    for n in 0..zeros {
        value = (value << 1) | u64::from(bit(zeros + 1 + n)?);
    }
    u32::try_from((1u64 << zeros) - 1 + value).ok()
}

/// Splits an H.264 Annex-B stream into access units: a new one starts at an access unit
/// delimiter (type 9), at SEI/SPS/PPS (6, 7, 8) or types 14..=18 once the current unit has a
/// slice (they belong to the next picture), or at a slice (1..=5) whose first_mb_in_slice is
/// 0. NAL units before the first slice join the first unit; anything after the last slice
/// without a slice of its own is dropped.
pub fn access_units(annexb: &[u8]) -> Vec<AccessUnit> {
    let mut units = Vec::new();
    let mut data = BytesMut::new();
    let mut has_slice = false;
    let mut key = false;
    for nal in nal_units(annexb) {
        let Some(&header) = nal.first() else {
            continue;
        };
        let nal_type = header & 0x1f;
        let is_slice = (1..=5).contains(&nal_type);
        let starts_unit = match nal_type {
            9 | 6 | 7 | 8 | 14..=18 => true,
            1..=5 => read_ue(nal.get(1..).unwrap_or_default()) == Some(0),
            _ => false,
        };
        if starts_unit && has_slice {
            units.push(AccessUnit {
                data: data.split().freeze(),
                key,
            });
            has_slice = false;
            key = false;
        }
        data.extend_from_slice(&[0, 0, 0, 1]);
        data.extend_from_slice(nal);
        has_slice |= is_slice;
        key |= nal_type == 5;
    }
    if has_slice {
        units.push(AccessUnit {
            data: data.freeze(),
            key,
        });
    }
    units
}

/// What every stream sends: access units, and audio frames (already HiSilicon-prefixed when
/// configured).
#[derive(Debug, Clone)]
pub struct MediaSource {
    pub video: Vec<AccessUnit>,
    pub audio: Vec<Bytes>,
}

impl MediaSource {
    /// Splits `annexb` into access units and `alaw` into 320-byte frames (a shorter last
    /// frame is dropped).
    pub fn from_bytes(
        annexb: &[u8],
        alaw: Option<&[u8]>,
        hisilicon: bool,
    ) -> anyhow::Result<MediaSource> {
        let video = access_units(annexb);
        if video.is_empty() {
            bail!("no H.264 picture in the video source (expected an Annex-B stream)");
        }
        let first = video.first().filter(|u| u.key);
        let first_types: Vec<u8> = first
            .map(|u| nal_units(&u.data).map(|n| n[0] & 0x1f).collect())
            .unwrap_or_default();
        // A decoder needs SPS and PPS before the first picture; a server builds the FLV
        // sequence header from them.
        if !(first_types.contains(&7) && first_types.contains(&8)) {
            bail!("the video source does not start with SPS, PPS and an IDR picture");
        }
        let audio = alaw
            .unwrap_or_default()
            .chunks_exact(AUDIO_FRAME_BYTES)
            .map(|f| {
                if hisilicon {
                    Bytes::from(hisilicon_prefixed(f))
                } else {
                    Bytes::copy_from_slice(f)
                }
            })
            .collect::<Vec<_>>();
        if alaw.is_some() && audio.is_empty() {
            bail!("the audio source is shorter than one {AUDIO_FRAME_BYTES}-byte frame");
        }
        Ok(MediaSource { video, audio })
    }

    /// Reads the files (each at most [`MAX_SOURCE_BYTES`]).
    pub fn load(video: &Path, audio: Option<&Path>, hisilicon: bool) -> anyhow::Result<Self> {
        let read = |path: &Path| -> anyhow::Result<Vec<u8>> {
            let len = std::fs::metadata(path)
                .with_context(|| format!("{}", path.display()))?
                .len();
            if len > MAX_SOURCE_BYTES {
                bail!("{}: over {MAX_SOURCE_BYTES} bytes", path.display());
            }
            std::fs::read(path).with_context(|| format!("{}", path.display()))
        };
        let annexb = read(video).context("--media-video")?;
        let alaw = audio
            .map(|p| read(p).context("--media-audio"))
            .transpose()?;
        MediaSource::from_bytes(&annexb, alaw.as_deref(), hisilicon)
    }

    /// Key frames in the video.
    pub fn key_frames(&self) -> usize {
        self.video.iter().filter(|u| u.key).count()
    }
}

/// How the simulated dashcams stream.
#[derive(Debug, Clone)]
pub struct DvrMediaConfig {
    /// 2016 (6-byte SIM) or 2019 (10-byte SIM) packet header.
    pub layout: Layout,
    /// Largest packet body; longer frames are subpackaged (JT/T 1078 says 950).
    pub max_body: usize,
    /// Video frames per second (an Annex-B file does not say reliably).
    pub fps: f64,
    /// Longest a stream lasts.
    pub duration: Duration,
    /// Most bytes one stream sends.
    pub max_bytes: u64,
    /// Most streams at once over all terminals; a request beyond is refused and counted.
    pub max_streams: usize,
    /// Longest wait for the media server to accept the connection.
    pub connect_timeout: Duration,
    /// Local addresses to connect from, round-robin; empty = the kernel's choice.
    pub source_ips: Vec<IpAddr>,
}

impl DvrMediaConfig {
    pub fn new(layout: Layout) -> DvrMediaConfig {
        DvrMediaConfig {
            layout,
            max_body: 950,
            fps: 15.0,
            duration: Duration::from_secs(60),
            max_bytes: 1024 * 1024 * 1024,
            max_streams: 10_000,
            connect_timeout: Duration::from_secs(5),
            source_ips: Vec::new(),
        }
    }

    /// Checks the settings; errors name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !(1..=u16::MAX as usize).contains(&self.max_body) {
            bail!("--media-max-body must be 1..=65535");
        }
        if !(self.fps.is_finite() && self.fps > 0.0 && self.fps <= 240.0) {
            bail!("--media-fps must be more than 0 and at most 240");
        }
        if self.duration.is_zero() {
            bail!("--media-seconds must be more than 0");
        }
        if self.max_bytes == 0 {
            bail!("--media-max-bytes must be more than 0");
        }
        if self.max_streams == 0 {
            bail!("--media-max-streams must be more than 0");
        }
        Ok(())
    }
}

/// Live (0x9101) or playback (0x9201).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamKind {
    Live,
    Playback,
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamEnd {
    ConnectFailed,
    /// 0x9102 close / 0x9202 stop, or a newer request for the same channel.
    ClosedByPlatform,
    /// The media server closed the connection or a write failed.
    Disconnected,
    Duration,
    ByteBound,
    /// The request asked for nothing this source has (e.g. talk audio without an audio file).
    NothingToSend,
}

/// One finished stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub imei: String,
    pub channel: u8,
    pub kind: StreamKind,
    pub server: String,
    pub end: StreamEnd,
    pub seconds: f64,
    pub packets: u64,
    pub bytes: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
}

/// Counters over all streams.
#[derive(Debug, Default)]
pub struct MediaCounters {
    pub requests: AtomicU64,
    pub refused: AtomicU64,
    pub connect_failures: AtomicU64,
    pub started: AtomicU64,
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub video_frames: AtomicU64,
    pub audio_frames: AtomicU64,
}

/// What the dashcams streamed: totals, and the finished streams (at most
/// [`MAX_STREAM_RECORDS`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaReport {
    pub requests: u64,
    pub refused: u64,
    pub connect_failures: u64,
    pub started: u64,
    pub streaming: u64,
    pub packets: u64,
    pub bytes: u64,
    pub video_frames: u64,
    pub audio_frames: u64,
    pub ends: Vec<(StreamEnd, u64)>,
    pub streams: Vec<StreamRecord>,
}

impl MediaReport {
    /// The lines added to a run's final table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "media: requests {}  refused {}  connect failures {}  streams {} (open {})",
            self.requests, self.refused, self.connect_failures, self.started, self.streaming
        );
        let _ = writeln!(
            out,
            "  packets {}  bytes {}  video frames {}  audio frames {}",
            self.packets, self.bytes, self.video_frames, self.audio_frames
        );
        let ends = self
            .ends
            .iter()
            .map(|(end, n)| format!("{} {n}", end_name(*end)))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(
            out,
            "  ended: {}",
            if ends.is_empty() { "-" } else { &ends }
        );
        out
    }
}

fn end_name(end: StreamEnd) -> &'static str {
    match end {
        StreamEnd::ConnectFailed => "connect_failed",
        StreamEnd::ClosedByPlatform => "closed_by_platform",
        StreamEnd::Disconnected => "disconnected",
        StreamEnd::Duration => "duration",
        StreamEnd::ByteBound => "byte_bound",
        StreamEnd::NothingToSend => "nothing_to_send",
    }
}

/// What a running stream is told by the platform's control messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Control {
    closed: bool,
    paused: bool,
    video: bool,
    audio: bool,
}

type StreamKey = (Imei, u8, StreamKind);

#[derive(Debug)]
struct Running {
    id: u64,
    control: watch::Sender<Control>,
}

#[derive(Debug)]
struct Inner {
    config: DvrMediaConfig,
    source: Arc<MediaSource>,
    counters: MediaCounters,
    running: Mutex<HashMap<StreamKey, Running>>,
    records: Mutex<(Vec<StreamRecord>, HashMap<StreamEnd, u64>)>,
    next_id: AtomicU64,
    next_source: AtomicUsize,
}

/// Simulated dashcams' media: a [`LiveMedia`] that streams a [`MediaSource`] as JT/T 1078
/// packets. Share one among all terminals of a run.
#[derive(Debug, Clone)]
pub struct DvrMedia {
    inner: Arc<Inner>,
}

/// What one stream sends and where.
struct Request {
    key: StreamKey,
    phone: Phone,
    server: String,
    tcp_port: u16,
    udp_port: u16,
    video: bool,
    audio: bool,
    duration: Duration,
}

impl DvrMedia {
    pub fn new(config: DvrMediaConfig, source: Arc<MediaSource>) -> anyhow::Result<DvrMedia> {
        config.validate()?;
        Ok(DvrMedia {
            inner: Arc::new(Inner {
                config,
                source,
                counters: MediaCounters::default(),
                running: Mutex::new(HashMap::new()),
                records: Mutex::new((Vec::new(), HashMap::new())),
                next_id: AtomicU64::new(0),
                next_source: AtomicUsize::new(0),
            }),
        })
    }

    pub fn counters(&self) -> &MediaCounters {
        &self.inner.counters
    }

    /// Streams running now.
    pub fn streaming(&self) -> usize {
        lock(&self.inner.running).len()
    }

    /// Totals and finished streams so far.
    pub fn report(&self) -> MediaReport {
        let c = &self.inner.counters;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let (streams, ends) = {
            let records = lock(&self.inner.records);
            let mut ends: Vec<(StreamEnd, u64)> = records.1.iter().map(|(e, n)| (*e, *n)).collect();
            ends.sort_by_key(|(e, _)| end_name(*e));
            (records.0.clone(), ends)
        };
        MediaReport {
            requests: load(&c.requests),
            refused: load(&c.refused),
            connect_failures: load(&c.connect_failures),
            started: load(&c.started),
            streaming: self.streaming() as u64,
            packets: load(&c.packets),
            bytes: load(&c.bytes),
            video_frames: load(&c.video_frames),
            audio_frames: load(&c.audio_frames),
            ends,
            streams,
        }
    }

    /// Stops every stream (they end as closed by the platform).
    pub fn stop_all(&self) {
        for running in lock(&self.inner.running).values() {
            running.control.send_modify(|c| c.closed = true);
        }
    }

    fn launch(&self, request: Request) {
        let inner = &self.inner;
        inner.counters.requests.fetch_add(1, Ordering::Relaxed);
        let control = Control {
            closed: false,
            paused: false,
            video: request.video,
            audio: request.audio && !inner.source.audio.is_empty(),
        };
        let (sender, receiver) = watch::channel(control);
        let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut running = lock(&inner.running);
            // A new request for a channel replaces the stream it has.
            if let Some(old) = running.remove(&request.key) {
                old.control.send_modify(|c| c.closed = true);
            }
            if running.len() >= inner.config.max_streams {
                inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            running.insert(
                request.key,
                Running {
                    id,
                    control: sender,
                },
            );
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            lock(&inner.running).remove(&request.key);
            inner.counters.refused.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let inner = inner.clone();
        runtime.spawn(async move {
            let started = Instant::now();
            let mut tally = Tally::default();
            let end = stream(&inner, &request, receiver, &mut tally).await;
            {
                let mut running = lock(&inner.running);
                if running.get(&request.key).is_some_and(|r| r.id == id) {
                    running.remove(&request.key);
                }
            }
            let mut records = lock(&inner.records);
            *records.1.entry(end).or_insert(0) += 1;
            if records.0.len() < MAX_STREAM_RECORDS {
                records.0.push(StreamRecord {
                    imei: request.key.0.to_string(),
                    channel: request.key.1,
                    kind: request.key.2,
                    server: request.server.clone(),
                    end,
                    seconds: started.elapsed().as_secs_f64(),
                    packets: tally.packets,
                    bytes: tally.bytes,
                    video_frames: tally.video_frames,
                    audio_frames: tally.audio_frames,
                });
            }
        });
    }

    fn control_stream(&self, key: StreamKey, change: impl FnOnce(&mut Control)) {
        if let Some(running) = lock(&self.inner.running).get(&key) {
            running.control.send_modify(change);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LiveMedia for DvrMedia {
    fn start(&self, stream: LiveStream) {
        let r = stream.request;
        // 0 audio+video, 1 video, 2 talk, 3 listen, 4 broadcast, 5 passthrough.
        let (video, audio) = match r.data_type {
            0 => (true, true),
            1 => (true, false),
            2 | 3 => (false, true),
            _ => (false, false),
        };
        self.launch(Request {
            key: (stream.imei, r.channel, StreamKind::Live),
            phone: stream.phone,
            server: r.server,
            tcp_port: r.tcp_port,
            udp_port: r.udp_port,
            video,
            audio,
            duration: self.inner.config.duration,
        });
    }

    fn control(&self, imei: Imei, control: LiveControl) {
        let key = (imei, control.channel, StreamKind::Live);
        match control.command {
            0 => self.control_stream(key, |c| match control.close_kind {
                1 => c.audio = false,
                2 => c.video = false,
                _ => c.closed = true,
            }),
            2 => self.control_stream(key, |c| c.paused = true),
            3 => self.control_stream(key, |c| c.paused = false),
            // Close talk: the audio of a talk or listen stream.
            4 => self.control_stream(key, |c| c.audio = false),
            // Switching main/sub stream changes nothing about a file source.
            _ => {}
        }
    }

    fn playback(&self, stream: PlaybackStream) {
        let r = stream.request;
        // 0 AV, 1 audio, 2 video, 3 audio or video.
        let (video, audio) = match r.av_type {
            1 => (false, true),
            2 => (true, false),
            _ => (true, true),
        };
        // A recording lasts from start to end; an open or unreadable range plays until the
        // configured bound.
        let range = match (r.start.to_utc(), r.end.to_utc()) {
            (Some(s), Some(e)) if e > s => (e - s).to_std().ok(),
            _ => None,
        };
        let bound = self.inner.config.duration;
        self.launch(Request {
            key: (stream.imei, r.channel, StreamKind::Playback),
            phone: stream.phone,
            server: r.server,
            tcp_port: r.tcp_port,
            udp_port: r.udp_port,
            video,
            audio,
            duration: range.map_or(bound, |d| d.min(bound)),
        });
    }

    fn playback_control(&self, imei: Imei, control: PlaybackControl) {
        let key = (imei, control.channel, StreamKind::Playback);
        match control.control {
            0 => self.control_stream(key, |c| c.paused = false),
            1 => self.control_stream(key, |c| c.paused = true),
            2 => self.control_stream(key, |c| c.closed = true),
            // Fast-forward, rewind, seek and key-frame play keep the stream going as it is.
            _ => {}
        }
    }
}

/// What one stream sent.
#[derive(Debug, Default)]
struct Tally {
    packets: u64,
    bytes: u64,
    video_frames: u64,
    audio_frames: u64,
}

/// Where packets go: a TCP connection (whose read side tells when the server closes it) or
/// a connected UDP socket.
enum Sink {
    Tcp(OwnedReadHalf, OwnedWriteHalf),
    Udp(UdpSocket),
}

async fn open_sink(inner: &Inner, request: &Request) -> Option<Sink> {
    let config = &inner.config;
    let source_ip = (!config.source_ips.is_empty()).then(|| {
        let n = inner.next_source.fetch_add(1, Ordering::Relaxed);
        config.source_ips[n % config.source_ips.len()]
    });
    let (port, udp) = match (request.tcp_port, request.udp_port) {
        (0, 0) => return None,
        (0, udp) => (udp, true),
        (tcp, _) => (tcp, false),
    };
    let lookup = tokio::net::lookup_host((request.server.as_str(), port));
    let addr: SocketAddr = tokio::time::timeout(config.connect_timeout, lookup)
        .await
        .ok()?
        .ok()?
        .next()?;
    if udp {
        let local = match source_ip {
            Some(ip) => SocketAddr::new(ip, 0),
            None if addr.is_ipv4() => SocketAddr::from(([0, 0, 0, 0], 0)),
            None => SocketAddr::from(([0u16; 8], 0)),
        };
        let socket = UdpSocket::bind(local).await.ok()?;
        socket.connect(addr).await.ok()?;
        Some(Sink::Udp(socket))
    } else {
        let tcp = dial(addr, source_ip, config.connect_timeout).await.ok()?;
        let _ = tcp.set_nodelay(true);
        let (read, write) = tcp.into_split();
        Some(Sink::Tcp(read, write))
    }
}

impl Sink {
    /// Sends `packets`: one write for TCP, one datagram each for UDP.
    async fn send(&mut self, packets: &[Bytes], scratch: &mut BytesMut) -> std::io::Result<()> {
        match self {
            Sink::Tcp(_, write) => {
                scratch.clear();
                for p in packets {
                    scratch.extend_from_slice(p);
                }
                write.write_all(scratch).await
            }
            Sink::Udp(socket) => {
                for p in packets {
                    socket.send(p).await?;
                }
                Ok(())
            }
        }
    }

    /// Resolves when the server closed the connection (or it failed); data it sends (talk
    /// audio) is read and dropped. Never resolves for UDP.
    async fn closed(&mut self, scratch: &mut [u8]) {
        match self {
            Sink::Tcp(read, _) => loop {
                match read.read(scratch).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            },
            Sink::Udp(_) => std::future::pending().await,
        }
    }
}

/// Streams one request until it ends; returns why.
async fn stream(
    inner: &Inner,
    request: &Request,
    mut control: watch::Receiver<Control>,
    tally: &mut Tally,
) -> StreamEnd {
    let config = &inner.config;
    let source = &inner.source;
    {
        let c = *control.borrow();
        if !c.video && !c.audio {
            return StreamEnd::NothingToSend;
        }
    }
    let Some(mut sink) = open_sink(inner, request).await else {
        inner
            .counters
            .connect_failures
            .fetch_add(1, Ordering::Relaxed);
        return StreamEnd::ConnectFailed;
    };
    inner.counters.started.fetch_add(1, Ordering::Relaxed);
    let mut packetizer = Packetizer::new(config.layout, request.phone, request.key.1);
    let frame_ms = 1000.0 / config.fps;
    let frame_interval = frame_ms.round().min(f64::from(u16::MAX)) as u16;
    let started = Instant::now();
    let deadline = started + request.duration;
    let at = |ms: f64| started + Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    let (mut next_video, mut next_audio) = (0.0f64, 0.0f64);
    let (mut video_index, mut audio_index) = (0usize, 0usize);
    let mut last_key_ms: Option<f64> = None;
    let mut out = BytesMut::new();
    let mut read_scratch = vec![0u8; 4096];
    let mut packets: Vec<Bytes> = Vec::new();
    loop {
        let c = *control.borrow_and_update();
        if c.closed {
            return StreamEnd::ClosedByPlatform;
        }
        let video = c.video && !source.video.is_empty();
        let audio = c.audio && !source.audio.is_empty();
        if !video && !audio {
            return StreamEnd::ClosedByPlatform;
        }
        let due_ms = match (video, audio) {
            (true, true) => next_video.min(next_audio),
            (true, false) => next_video,
            _ => next_audio,
        };
        let due = at(due_ms);
        tokio::select! {
            biased;
            changed = control.changed() => {
                if changed.is_err() {
                    return StreamEnd::ClosedByPlatform;
                }
                // After a pause, carry on from now rather than catch up in a burst.
                let now_ms = started.elapsed().as_secs_f64() * 1000.0;
                next_video = next_video.max(now_ms);
                next_audio = next_audio.max(now_ms);
                continue;
            }
            () = sink.closed(&mut read_scratch) => return StreamEnd::Disconnected,
            () = tokio::time::sleep_until(deadline) => return StreamEnd::Duration,
            () = tokio::time::sleep_until(due), if !c.paused => {}
        }
        packets.clear();
        let mut frames = (0u64, 0u64);
        if video && next_video <= due_ms {
            let unit = &source.video[video_index % source.video.len()];
            video_index = video_index.wrapping_add(1);
            let data_type = if unit.key {
                DataType::IFrame
            } else {
                DataType::PFrame
            };
            let since_key = last_key_ms.map_or(0.0, |k| next_video - k);
            if unit.key {
                last_key_ms = Some(next_video);
            }
            packets.extend(packetizer.video(
                &unit.data,
                data_type,
                PT_H264,
                next_video as u64,
                since_key.round().min(f64::from(u16::MAX)) as u16,
                frame_interval,
                config.max_body,
            ));
            next_video += frame_ms;
            frames.0 += 1;
        }
        if audio && next_audio <= due_ms {
            let frame = &source.audio[audio_index % source.audio.len()];
            audio_index = audio_index.wrapping_add(1);
            packets.push(packetizer.audio(frame, PT_G711A, next_audio as u64));
            next_audio += AUDIO_FRAME_MS;
            frames.1 += 1;
        }
        let bytes: u64 = packets.iter().map(|p| p.len() as u64).sum();
        if tally.bytes.saturating_add(bytes) > config.max_bytes {
            return StreamEnd::ByteBound;
        }
        match tokio::time::timeout_at(deadline, sink.send(&packets, &mut out)).await {
            Err(_) => return StreamEnd::Duration,
            Ok(Err(_)) => return StreamEnd::Disconnected,
            Ok(Ok(())) => {}
        }
        let counters = &inner.counters;
        tally.packets += packets.len() as u64;
        tally.bytes += bytes;
        tally.video_frames += frames.0;
        tally.audio_frames += frames.1;
        counters
            .packets
            .fetch_add(packets.len() as u64, Ordering::Relaxed);
        counters.bytes.fetch_add(bytes, Ordering::Relaxed);
        counters.video_frames.fetch_add(frames.0, Ordering::Relaxed);
        counters.audio_frames.fetch_add(frames.1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_media;
    use iothub::codec::jt808::LiveRequest;
    use iothub::media::jt1078::{Decoder, Frame, Reassembler};
    use tokio::net::TcpListener;

    fn h264() -> Vec<u8> {
        std::fs::read(test_media::h264_file()).expect("read the H.264 file")
    }

    #[test]
    fn access_units_match_the_frames_ffprobe_decodes() {
        let units = access_units(&h264());
        assert_eq!(
            units.len() as u64,
            test_media::ffprobe_frames(test_media::h264_file())
        );
    }

    #[test]
    fn access_units_agree_with_the_hub_splitter() {
        use iothub::media::annexb::{self, VideoCodec};
        let data = h264();
        // Compared NAL by NAL: the hub keeps 3-byte start codes where the file has them.
        let units = access_units(&data);
        let ours: Vec<Vec<&[u8]>> = units.iter().map(|u| nal_units(&u.data).collect()).collect();
        let hub: Vec<Vec<&[u8]>> = annexb::access_units(VideoCodec::H264, &data)
            .into_iter()
            .map(|u| nal_units(u).collect())
            .collect();
        assert!(ours == hub, "the two splitters cut the stream differently");
    }

    #[test]
    fn key_access_units_match_ffprobe_key_packets() {
        let units = access_units(&h264());
        let (_, keys) = test_media::ffprobe_packets(test_media::h264_file());
        assert_eq!(units.iter().filter(|u| u.key).count() as u64, keys);
    }

    #[test]
    fn first_access_unit_carries_sps_pps_and_the_idr_slice() {
        let units = access_units(&h264());
        let types: Vec<u8> = units
            .first()
            .map(|u| nal_units(&u.data).map(|n| n[0] & 0x1f).collect())
            .unwrap_or_default();
        // x264 writes its settings as an SEI in the first picture.
        assert_eq!(types, vec![7, 8, 6, 5]);
    }

    #[test]
    fn access_units_keep_every_nal_byte() {
        let data = h264();
        let units = access_units(&data);
        let nal_bytes: usize = nal_units(&data).map(<[u8]>::len).sum();
        let nal_count = nal_units(&data).count();
        let unit_bytes: usize = units.iter().map(|u| u.data.len()).sum();
        assert_eq!(unit_bytes, nal_bytes + 4 * nal_count);
    }

    #[test]
    fn access_unit_delimiters_start_units() {
        let file = test_media::h264_aud_file();
        let data = std::fs::read(file).expect("read the H.264 file");
        let units = access_units(&data);
        assert_eq!(units.len() as u64, test_media::ffprobe_frames(file));
        assert!(
            units
                .iter()
                .all(|u| u.data.get(4).map(|h| h & 0x1f) == Some(9)),
            "every unit starts with its delimiter"
        );
    }

    #[test]
    fn exp_golomb_values() {
        assert_eq!(read_ue(&[0x80]), Some(0)); // 1
        assert_eq!(read_ue(&[0x40]), Some(1)); // 010
        assert_eq!(read_ue(&[0x60]), Some(2)); // 011
        assert_eq!(read_ue(&[0x20]), Some(3)); // 00100
        assert_eq!(read_ue(&[0x01, 0x00]), Some(127)); // 0000000 1 0000000
        assert_eq!(read_ue(&[0x00, 0x80, 0x00]), Some(255)); // 00000000 1 00000000
        assert_eq!(read_ue(&[0x00]), None);
        assert_eq!(read_ue(&[]), None);
    }

    #[test]
    fn audio_is_cut_in_320_byte_frames_with_the_hisilicon_header() {
        let alaw = std::fs::read(test_media::alaw_file()).expect("read the A-law file");
        let source = MediaSource::from_bytes(&h264(), Some(&alaw), true).expect("source");
        assert_eq!(source.audio.len(), alaw.len() / 320);
        assert_eq!(
            source.audio.first().map(|f| f[..4].to_vec()),
            Some(vec![0x00, 0x01, 0xa0, 0x00])
        );
    }

    #[test]
    fn an_flv_file_is_not_taken_for_annex_b() {
        let flv = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        assert!(MediaSource::from_bytes(&flv, None, false).is_err());
    }

    #[test]
    fn a_file_without_pictures_is_refused() {
        let err = MediaSource::from_bytes(&[0, 0, 0, 1, 0x67, 0x42], None, false)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("no H.264 picture in the video source (expected an Annex-B stream)".to_owned())
        );
    }

    fn phone() -> Phone {
        Phone::from_digits("013800138000", false).expect("phone")
    }

    fn imei() -> Imei {
        "865100000000007".parse().expect("IMEI")
    }

    fn live(port: u16, channel: u8, data_type: u8) -> LiveStream {
        LiveStream {
            imei: imei(),
            phone: phone(),
            request: LiveRequest {
                server: "127.0.0.1".to_owned(),
                tcp_port: port,
                udp_port: 0,
                channel,
                data_type,
                stream: 0,
            },
        }
    }

    fn media(layout: Layout, fps: f64, seconds: f64, audio: bool) -> DvrMedia {
        let alaw = audio.then(|| std::fs::read(test_media::alaw_file()).expect("read A-law"));
        let source = MediaSource::from_bytes(&h264(), alaw.as_deref(), false).expect("source");
        let mut config = DvrMediaConfig::new(layout);
        config.fps = fps;
        config.duration = Duration::from_secs_f64(seconds);
        DvrMedia::new(config, Arc::new(source)).expect("config")
    }

    /// Accepts one connection and decodes what arrives until it closes or `limit` passes.
    async fn receive(listener: TcpListener, layout: Layout, limit: Duration) -> Vec<Frame> {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut decoder = Decoder::with_layout(layout);
        let mut reassembler = Reassembler::new(1024 * 1024);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let end = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(end, socket.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                Ok(Ok(_)) => {}
            }
            while let Ok(Some(packet)) = decoder.decode(&mut buf) {
                if let Ok(Some(frame)) = reassembler.push(packet) {
                    frames.push(frame);
                }
            }
        }
        frames
    }

    async fn wait_for_end(media: &DvrMedia) {
        for _ in 0..500 {
            if media.streaming() == 0 && !media.report().streams.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the stream did not end: {:?}", media.report());
    }

    #[tokio::test]
    async fn the_server_reassembles_the_access_units_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 100.0, 0.5, false);
        media.start(live(port, 3, 1));
        let frames = receive(listener, Layout::Sim6, Duration::from_secs(3)).await;
        wait_for_end(&media).await;
        let source = access_units(&h264());
        assert!(frames.len() >= 10, "{} frames", frames.len());
        for (i, frame) in frames.iter().enumerate() {
            assert_eq!(frame.body, source[i].data, "frame {i}");
        }
    }

    #[tokio::test]
    async fn what_the_server_reassembles_decodes_with_ffmpeg() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 100.0, 0.5, false);
        media.start(live(port, 1, 1));
        let frames = receive(listener, Layout::Sim6, Duration::from_secs(3)).await;
        let stream: Vec<u8> = frames.iter().flat_map(|f| f.body.iter().copied()).collect();
        let path = std::env::temp_dir().join(format!(
            "iothub-loadgen-received-{}.264",
            std::process::id()
        ));
        std::fs::write(&path, &stream).expect("write the received stream");
        let decoded = test_media::ffprobe_frames(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(decoded, frames.len() as u64);
    }

    #[tokio::test]
    async fn frames_are_cut_into_packets_of_at_most_max_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 100.0, 0.1, false);
        media.start(live(port, 1, 1));
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = BytesMut::new();
        while matches!(
            tokio::time::timeout(Duration::from_secs(3), socket.read_buf(&mut buf)).await,
            Ok(Ok(n)) if n > 0
        ) {}
        let mut decoder = Decoder::with_layout(Layout::Sim6);
        let mut bodies = Vec::new();
        while let Ok(Some(packet)) = decoder.decode(&mut buf) {
            bodies.push(packet.body.len());
        }
        let first = access_units(&h264())[0].data.len();
        let packets = first.div_ceil(950);
        assert_eq!(
            bodies.iter().take(packets).sum::<usize>(),
            first,
            "the first frame in {packets} packets of {bodies:?}"
        );
        assert!(bodies.iter().all(|&n| n <= 950), "{bodies:?}");
    }

    #[tokio::test]
    async fn frames_carry_channel_sim_types_and_timestamps() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim10, 100.0, 0.3, false);
        media.start(live(port, 2, 1));
        let frames = receive(listener, Layout::Sim10, Duration::from_secs(3)).await;
        let first = frames.first().expect("a frame");
        assert_eq!(first.channel, 2);
        assert_eq!(first.data_type, DataType::IFrame);
        assert_eq!(first.payload_type, PT_H264);
        assert_eq!(
            first.sim,
            iothub::media::jt1078::sim_for_layout(Layout::Sim10, phone())
        );
        assert_eq!(frames.get(1).map(|f| f.data_type), Some(DataType::PFrame));
        assert_eq!(frames.get(1).and_then(|f| f.timestamp), Some(10));
    }

    #[tokio::test]
    async fn audio_and_video_are_interleaved_by_time() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 25.0, 0.4, true);
        media.start(live(port, 1, 0));
        let frames = receive(listener, Layout::Sim6, Duration::from_secs(3)).await;
        let kinds: Vec<bool> = frames
            .iter()
            .map(|f| f.data_type == DataType::Audio)
            .collect();
        // 25 fps and 40 ms audio frames: one of each per 40 ms, video first at each instant.
        assert_eq!(&kinds[..6], &[false, true, false, true, false, true]);
        let audio = frames.iter().find(|f| f.data_type == DataType::Audio);
        assert_eq!(audio.map(|f| f.body.len()), Some(AUDIO_FRAME_BYTES));
    }

    #[tokio::test]
    async fn close_from_the_platform_ends_the_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 50.0, 30.0, false);
        media.start(live(port, 1, 1));
        let (_socket, _) = listener.accept().await.expect("accept");
        tokio::time::sleep(Duration::from_millis(200)).await;
        media.control(
            imei(),
            LiveControl {
                channel: 1,
                command: 0,
                close_kind: 0,
                stream: 0,
            },
        );
        wait_for_end(&media).await;
        let report = media.report();
        assert_eq!(
            report.streams.first().map(|s| s.end),
            Some(StreamEnd::ClosedByPlatform)
        );
        assert!(report.video_frames >= 5, "{report:?}");
    }

    #[tokio::test]
    async fn the_server_closing_ends_the_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 50.0, 30.0, false);
        media.start(live(port, 1, 1));
        let (socket, _) = listener.accept().await.expect("accept");
        drop(socket);
        wait_for_end(&media).await;
        assert_eq!(
            media.report().streams.first().map(|s| s.end),
            Some(StreamEnd::Disconnected)
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        drop(listener);
        let media = media(Layout::Sim6, 50.0, 30.0, false);
        media.start(live(port, 1, 1));
        wait_for_end(&media).await;
        assert_eq!(media.report().connect_failures, 1);
    }

    #[tokio::test]
    async fn talk_without_an_audio_source_sends_nothing() {
        let media = media(Layout::Sim6, 50.0, 30.0, false);
        media.start(live(9, 1, 2));
        wait_for_end(&media).await;
        assert_eq!(
            media.report().streams.first().map(|s| s.end),
            Some(StreamEnd::NothingToSend)
        );
    }

    #[tokio::test]
    async fn udp_when_only_a_udp_port_is_given() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let port = socket.local_addr().expect("address").port();
        let media = media(Layout::Sim6, 100.0, 0.2, false);
        let mut stream = live(0, 1, 1);
        stream.request.udp_port = port;
        media.start(stream);
        let mut datagram = vec![0u8; 2048];
        let n = tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut datagram))
            .await
            .expect("a datagram in time")
            .expect("recv");
        assert_eq!(datagram.get(..4), Some(&b"01cd"[..]));
        assert!(n <= 30 + 950, "{n} bytes");
    }
}
