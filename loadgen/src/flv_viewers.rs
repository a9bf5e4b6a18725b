//! HTTP-FLV viewers: many players pulling one stream from iothub's media server at once.
//!
//! A media server is sized by its viewers, not its cameras: each viewer gets its own copy of
//! every tag, starts with the cached GOP, and falls behind when the server or the network
//! cannot keep up. Each simulated viewer here opens its own connection (from a source
//! address of its own, so thousands fit on one machine), sends an HTTP/1.1 GET over plain
//! TCP or TLS, parses the FLV bytes as they arrive and counts what a player would notice:
//! how long until the first picture, bytes and tags, key frames, stalls (more than a gap
//! without any tag) and dropped connections. Everything is bounded: the number of viewers,
//! the run time, the size of a tag (the parser skips tag bodies rather than buffering them).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::dial::{dial, DialError};
use crate::rate::ConnectLimiter;

/// The largest tag body a reader accepts unless told otherwise: 16 MiB, which the 24-bit
/// DataSize cannot exceed. Readers may be given a lower bound ([`FlvReader::with_max_tag`]):
/// a wrong length would otherwise skip most of a stream silently.
pub const MAX_TAG_DATA: u32 = 16 * 1024 * 1024;

/// At most this many viewers in one run (each is a socket and a task).
pub const MAX_VIEWERS: u32 = 100_000;

/// First-frame times kept per viewer (one per stream); a viewer reconnecting more often
/// than this in one run has its later streams counted but not timed.
pub const MAX_FIRST_FRAMES_KEPT: usize = 10_000;

/// FLV tag types.
pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// One FLV tag as a viewer sees it: its header and what its first two body bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagInfo {
    /// 8 audio, 9 video, 18 script (others are passed on as they are).
    pub tag_type: u8,
    pub data_size: u32,
    /// Milliseconds, the extended byte included.
    pub timestamp: u32,
    /// Video frame type (1 key, 2 inter, 3 disposable, 5 command); 0 for other tags.
    pub frame_type: u8,
    /// A video tag carrying a coded picture: not a sequence header or end of sequence, not
    /// a command frame.
    pub video_frame: bool,
    /// A video frame with frame type 1.
    pub key_frame: bool,
    /// An AVC/HEVC decoder configuration (AVCPacketType 0, or enhanced SequenceStart).
    pub sequence_header: bool,
}

/// What the reader found in the bytes fed so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlvEvent {
    Header { audio: bool, video: bool },
    Tag(TagInfo),
}

/// Why a byte stream is not FLV.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not an FLV stream: it starts with {0:02x?}")]
    Signature([u8; 3]),
    #[error("FLV header size {0} is below 9")]
    HeaderSize(u32),
    #[error("FLV tag data size {size} exceeds {max}")]
    TagTooLarge { size: u32, max: u32 },
    #[error("PreviousTagSize {found} where {expected} was due")]
    PreviousTagSize { expected: u32, found: u32 },
}

#[derive(Debug, Clone, Copy)]
enum Stage {
    /// The 9-byte header.
    Header,
    /// Header bytes beyond 9 (DataOffset > 9), skipped.
    HeaderRest { left: u32 },
    /// PreviousTagSize, which must equal 11 + DataSize of the tag before (0 first).
    PreviousSize { expected: u32 },
    /// The 11-byte tag header.
    TagHeader,
    /// A tag body: its first two bytes are kept, the rest skipped.
    Body { tag: TagInfo, left: u32, seen: u32 },
}

/// An incremental FLV reader that keeps at most 11 bytes: feed it whatever the socket gave.
#[derive(Debug, Clone)]
pub struct FlvReader {
    stage: Stage,
    fixed: [u8; 11],
    filled: usize,
    first: [u8; 2],
    max_tag: u32,
    failed: Option<FlvError>,
}

impl Default for FlvReader {
    fn default() -> Self {
        FlvReader::new()
    }
}

impl FlvReader {
    pub fn new() -> FlvReader {
        FlvReader::with_max_tag(MAX_TAG_DATA)
    }

    /// A reader refusing tags whose body is larger than `max_tag` bytes.
    pub fn with_max_tag(max_tag: u32) -> FlvReader {
        FlvReader {
            stage: Stage::Header,
            fixed: [0; 11],
            filled: 0,
            first: [0; 2],
            max_tag,
            failed: None,
        }
    }

    /// Reads `data`, calling `on_event` for the header and for every tag completed by it.
    /// After an error the stream is not FLV any more and every later call returns it again.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut on_event: impl FnMut(FlvEvent),
    ) -> Result<(), FlvError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        while !data.is_empty() {
            match self.step(&mut data, &mut on_event) {
                Ok(()) => {}
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        // A tag with an empty body is complete as soon as its header is.
        if let Stage::Body { left: 0, tag, .. } = self.stage {
            self.finish_body(tag, &mut on_event);
        }
        Ok(())
    }

    /// Copies up to `want` bytes into the fixed buffer; true once it holds `want`.
    fn fill(&mut self, data: &mut &[u8], want: usize) -> bool {
        let take = (want - self.filled).min(data.len());
        self.fixed[self.filled..self.filled + take].copy_from_slice(&data[..take]);
        self.filled += take;
        *data = &data[take..];
        if self.filled == want {
            self.filled = 0;
            true
        } else {
            false
        }
    }

    fn step(
        &mut self,
        data: &mut &[u8],
        on_event: &mut impl FnMut(FlvEvent),
    ) -> Result<(), FlvError> {
        match self.stage {
            Stage::Header => {
                if !self.fill(data, 9) {
                    return Ok(());
                }
                let h = self.fixed;
                if &h[..3] != b"FLV" {
                    return Err(FlvError::Signature([h[0], h[1], h[2]]));
                }
                let offset = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
                if offset < 9 {
                    return Err(FlvError::HeaderSize(offset));
                }
                on_event(FlvEvent::Header {
                    audio: h[4] & 0x04 != 0,
                    video: h[4] & 0x01 != 0,
                });
                self.stage = match offset - 9 {
                    0 => Stage::PreviousSize { expected: 0 },
                    left => Stage::HeaderRest { left },
                };
            }
            Stage::HeaderRest { left } => {
                let skip = (left as usize).min(data.len());
                *data = &data[skip..];
                let left = left - skip as u32;
                self.stage = if left == 0 {
                    Stage::PreviousSize { expected: 0 }
                } else {
                    Stage::HeaderRest { left }
                };
            }
            Stage::PreviousSize { expected } => {
                if !self.fill(data, 4) {
                    return Ok(());
                }
                let f = self.fixed;
                let found = u32::from_be_bytes([f[0], f[1], f[2], f[3]]);
                if found != expected {
                    return Err(FlvError::PreviousTagSize { expected, found });
                }
                self.stage = Stage::TagHeader;
            }
            Stage::TagHeader => {
                if !self.fill(data, 11) {
                    return Ok(());
                }
                let h = self.fixed;
                let data_size = u32::from_be_bytes([0, h[1], h[2], h[3]]);
                if data_size > self.max_tag {
                    return Err(FlvError::TagTooLarge {
                        size: data_size,
                        max: self.max_tag,
                    });
                }
                let timestamp = u32::from_be_bytes([h[7], h[4], h[5], h[6]]);
                let tag = TagInfo {
                    tag_type: h[0] & 0x1f,
                    data_size,
                    timestamp,
                    key_frame: false,
                    sequence_header: false,
                    frame_type: 0,
                    video_frame: false,
                };
                self.first = [0; 2];
                self.stage = Stage::Body {
                    tag,
                    left: data_size,
                    seen: 0,
                };
            }
            Stage::Body { tag, left, seen } => {
                if left == 0 {
                    self.finish_body(tag, on_event);
                    return Ok(());
                }
                let take = (left as usize).min(data.len());
                for (i, b) in data[..take].iter().take(2).enumerate() {
                    if let Some(slot) = self.first.get_mut(seen as usize + i) {
                        *slot = *b;
                    }
                }
                *data = &data[take..];
                let left = left - take as u32;
                let seen = seen.saturating_add(take as u32);
                self.stage = Stage::Body { tag, left, seen };
                if left == 0 {
                    self.finish_body(tag, on_event);
                }
            }
        }
        Ok(())
    }

    fn finish_body(&mut self, mut tag: TagInfo, on_event: &mut impl FnMut(FlvEvent)) {
        if tag.tag_type == TAG_VIDEO && tag.data_size > 0 {
            classify_video(&mut tag, self.first);
        }
        on_event(FlvEvent::Tag(tag));
        self.stage = Stage::PreviousSize {
            expected: tag.data_size + 11,
        };
    }
}

/// What a video tag's first two bytes say: frame type, and whether it is a sequence header
/// or a coded picture.
fn classify_video(tag: &mut TagInfo, first: [u8; 2]) {
    let b = first[0];
    // Frame type 5 is a command frame (no picture).
    let picture;
    if b & 0x80 != 0 {
        // Enhanced FLV: IsExHeader | FrameType (3 bits) | PacketType: 0 SequenceStart,
        // 1 CodedFrames, 2 SequenceEnd, 3 CodedFramesX, 4 Metadata.
        tag.frame_type = (b >> 4) & 0x07;
        tag.sequence_header = b & 0x0f == 0;
        picture = matches!(b & 0x0f, 1 | 3);
    } else {
        // FrameType | CodecID; AVC (7) and HEVC (12) then say AVCPacketType: 0 sequence
        // header, 1 NAL units, 2 end of sequence.
        tag.frame_type = b >> 4;
        if matches!(b & 0x0f, 7 | 12) {
            let packet_type = if tag.data_size >= 2 {
                Some(first[1])
            } else {
                None
            };
            tag.sequence_header = packet_type == Some(0);
            picture = packet_type == Some(1);
        } else {
            picture = true;
        }
    }
    tag.video_frame = picture && tag.frame_type != 5;
    tag.key_frame = tag.video_frame && tag.frame_type == 1;
}

/// A viewer run: who pulls what, from where, for how long.
#[derive(Debug, Clone)]
pub struct ViewerConfig {
    /// `http://host:port/path` or `https://...` (then `ca_file` is required).
    pub url: Uri,
    pub viewers: u32,
    /// How long the run lasts; every viewer stops then.
    pub duration: Duration,
    /// PEM file of the certificate authorities trusted for `https` URLs.
    pub ca_file: Option<PathBuf>,
    /// Local source addresses, round-robin over the viewers; empty = the kernel's choice.
    pub source_ips: Vec<IpAddr>,
    /// New connections per second over all viewers; 0 = unpaced.
    pub connect_rate: f64,
    /// Longest wait for a connection, TLS handshake and response head.
    pub connect_timeout: Duration,
    /// A gap longer than this between two tags is a stall.
    pub stall_gap: Duration,
    /// Pause before a viewer whose stream ended connects again; `None` = one stream each.
    pub reconnect_delay: Option<Duration>,
    /// Print a progress line every second.
    pub progress: bool,
}

impl ViewerConfig {
    /// Defaults for `viewers` viewers of `url` for `duration`.
    pub fn new(url: Uri, viewers: u32, duration: Duration) -> ViewerConfig {
        ViewerConfig {
            url,
            viewers,
            duration,
            ca_file: None,
            source_ips: Vec::new(),
            connect_rate: 500.0,
            connect_timeout: Duration::from_secs(5),
            stall_gap: Duration::from_secs(1),
            reconnect_delay: Some(Duration::from_secs(1)),
            progress: false,
        }
    }

    /// Checks the settings; errors name the flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.viewers == 0 || self.viewers > MAX_VIEWERS {
            bail!("--viewers must be 1..={MAX_VIEWERS}");
        }
        if self.duration.is_zero() {
            bail!("--seconds must be more than 0");
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            bail!("--connect-rate must be a number >= 0 (0 = no limit)");
        }
        if self.connect_timeout.is_zero() {
            bail!("--connect-timeout must be more than 0");
        }
        if self.stall_gap.is_zero() {
            bail!("--stall-gap must be more than 0");
        }
        Target::of(self)?;
        Ok(())
    }
}

/// Where the viewers connect, resolved once.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    /// Host header value.
    authority: String,
    path: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl Target {
    fn of(config: &ViewerConfig) -> anyhow::Result<Target> {
        let url = &config.url;
        let secure = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => bail!("--url {url}: expected http:// or https://"),
        };
        let Some(authority) = url.authority() else {
            bail!("--url {url}: no host");
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let path = url
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
        let tls = if secure {
            let Some(ca_file) = &config.ca_file else {
                bail!("--url {url}: https needs --ca-file");
            };
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .with_context(|| format!("--url {url}: not a TLS server name"))?;
            Some((tls_connector(ca_file)?, name))
        } else {
            None
        };
        Ok(Target {
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path,
            tls,
        })
    }
}

/// A TLS client trusting exactly the certificates in `ca_file`.
fn tls_connector(ca_file: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file)
        .with_context(|| format!("--ca-file {}", ca_file.display()))?;
    for cert in certs {
        let cert = cert.with_context(|| format!("--ca-file {}", ca_file.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("--ca-file {}", ca_file.display()))?;
    }
    if roots.is_empty() {
        bail!("--ca-file {}: no certificate", ca_file.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Counters every viewer adds to, read by the progress line and the report.
#[derive(Debug, Default)]
pub struct ViewCounters {
    pub connects_attempted: AtomicU64,
    pub connect_failures: AtomicU64,
    /// Responses other than 200.
    pub http_errors: AtomicU64,
    /// Streams that were not FLV or broke its framing.
    pub parse_errors: AtomicU64,
    /// Streams that ended (closed by the server, reset) before the run did.
    pub disconnects: AtomicU64,
    /// Viewers receiving a stream right now.
    pub watching: AtomicU64,
    pub bytes: AtomicU64,
    pub tags: AtomicU64,
    pub video_frames: AtomicU64,
    pub key_frames: AtomicU64,
    pub stalls: AtomicU64,
    pub stall_ms: AtomicU64,
}

/// What one viewer received over the whole run (all its streams).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewerStats {
    pub viewer: u32,
    /// Streams opened (a 200 response).
    pub streams: u64,
    pub connect_failures: u64,
    pub http_errors: u64,
    pub parse_errors: u64,
    pub disconnects: u64,
    /// Body bytes (FLV), without HTTP framing.
    pub bytes: u64,
    pub tags: u64,
    pub video_frames: u64,
    pub key_frames: u64,
    pub audio_tags: u64,
    /// From starting to connect to the first video frame, per stream that got one.
    pub first_frame_ms: Vec<u64>,
    pub stalls: u64,
    pub stall_ms: u64,
}

/// First-frame latency over all streams.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FirstFrame {
    pub streams: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// The outcome of a viewer run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewReport {
    pub url: String,
    pub viewers: u32,
    pub duration_s: f64,
    pub stall_gap_ms: u64,
    pub connects_attempted: u64,
    pub streams: u64,
    pub connect_failures: u64,
    pub http_errors: u64,
    pub parse_errors: u64,
    pub disconnects: u64,
    pub bytes: u64,
    pub tags: u64,
    pub video_frames: u64,
    pub key_frames: u64,
    pub stalls: u64,
    pub stall_ms: u64,
    /// Viewers that stalled at least once.
    pub viewers_stalled: u32,
    /// Viewers that never got a video frame.
    pub viewers_without_video: u32,
    pub first_frame: Option<FirstFrame>,
    /// Fewest and most bytes one viewer received.
    pub min_viewer_bytes: u64,
    pub max_viewer_bytes: u64,
    pub per_viewer: Vec<ViewerStats>,
}

impl ViewReport {
    /// Adds up the viewers' stats.
    pub fn new(
        config: &ViewerConfig,
        elapsed: Duration,
        connects_attempted: u64,
        per_viewer: Vec<ViewerStats>,
    ) -> ViewReport {
        let sum = |f: fn(&ViewerStats) -> u64| per_viewer.iter().map(f).sum::<u64>();
        let mut histogram = Histogram::<u64>::new(3).ok();
        for ms in per_viewer.iter().flat_map(|v| v.first_frame_ms.iter()) {
            if let Some(h) = histogram.as_mut() {
                h.saturating_record(*ms);
            }
        }
        let first_frame = histogram.filter(|h| !h.is_empty()).map(|h| FirstFrame {
            streams: h.len(),
            p50_ms: h.value_at_quantile(0.5) as f64,
            p99_ms: h.value_at_quantile(0.99) as f64,
            max_ms: h.max() as f64,
        });
        ViewReport {
            url: config.url.to_string(),
            viewers: config.viewers,
            duration_s: elapsed.as_secs_f64(),
            stall_gap_ms: u64::try_from(config.stall_gap.as_millis()).unwrap_or(u64::MAX),
            connects_attempted,
            streams: sum(|v| v.streams),
            connect_failures: sum(|v| v.connect_failures),
            http_errors: sum(|v| v.http_errors),
            parse_errors: sum(|v| v.parse_errors),
            disconnects: sum(|v| v.disconnects),
            bytes: sum(|v| v.bytes),
            tags: sum(|v| v.tags),
            video_frames: sum(|v| v.video_frames),
            key_frames: sum(|v| v.key_frames),
            stalls: sum(|v| v.stalls),
            stall_ms: sum(|v| v.stall_ms),
            viewers_stalled: per_viewer.iter().filter(|v| v.stalls > 0).count() as u32,
            viewers_without_video: per_viewer.iter().filter(|v| v.video_frames == 0).count() as u32,
            first_frame,
            min_viewer_bytes: per_viewer.iter().map(|v| v.bytes).min().unwrap_or(0),
            max_viewer_bytes: per_viewer.iter().map(|v| v.bytes).max().unwrap_or(0),
            per_viewer,
        }
    }

    /// The summary printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mbit = if self.duration_s > 0.0 {
            self.bytes as f64 * 8.0 / self.duration_s / 1e6
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "view {}: {} viewers for {:.1}s",
            self.url, self.viewers, self.duration_s
        );
        let _ = writeln!(
            out,
            "  connects {}  streams {}  connect failures {}  http errors {}  parse errors {}  disconnects {}",
            self.connects_attempted,
            self.streams,
            self.connect_failures,
            self.http_errors,
            self.parse_errors,
            self.disconnects
        );
        let _ = writeln!(
            out,
            "  bytes {} ({mbit:.2} Mbit/s; per viewer {}..{})  tags {}  video frames {}  key frames {}",
            self.bytes,
            self.min_viewer_bytes,
            self.max_viewer_bytes,
            self.tags,
            self.video_frames,
            self.key_frames
        );
        match &self.first_frame {
            Some(f) => {
                let _ = writeln!(
                    out,
                    "  first video frame ({} streams): p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  viewers without video {}",
                    f.streams, f.p50_ms, f.p99_ms, f.max_ms, self.viewers_without_video
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  first video frame: none  viewers without video {}",
                    self.viewers_without_video
                );
            }
        }
        let _ = writeln!(
            out,
            "  stalls (gap > {} ms) {}  stalled {:.1} s in total  viewers that stalled {}",
            self.stall_gap_ms,
            self.stalls,
            self.stall_ms as f64 / 1000.0,
            self.viewers_stalled
        );
        out
    }
}

/// Runs `config.viewers` viewers until `config.duration` has passed.
pub async fn run(config: ViewerConfig) -> anyhow::Result<ViewReport> {
    config.validate()?;
    let target = Target::of(&config)?;
    let addr = resolve(&target).await?;
    let counters = Arc::new(ViewCounters::default());
    let limiter = Arc::new(ConnectLimiter::new(config.connect_rate));
    let started = Instant::now();
    let deadline = started + config.duration;
    let mut tasks = JoinSet::new();
    for viewer in 0..config.viewers {
        let source_ip = (!config.source_ips.is_empty())
            .then(|| config.source_ips[viewer as usize % config.source_ips.len()]);
        let spec = ViewerSpec {
            viewer,
            addr,
            source_ip,
            target: target.clone(),
            connect_timeout: config.connect_timeout,
            stall_gap: config.stall_gap,
            reconnect_delay: config.reconnect_delay,
            deadline,
        };
        tasks.spawn(watch(spec, counters.clone(), limiter.clone()));
    }
    let progress = config.progress.then(|| {
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                println!("{}", progress_line(&counters, started.elapsed()));
            }
        })
    });
    let mut per_viewer = Vec::with_capacity(config.viewers as usize);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(stats) => per_viewer.push(stats),
            Err(e) => bail!("a viewer task failed: {e}"),
        }
    }
    if let Some(p) = progress {
        p.abort();
    }
    per_viewer.sort_by_key(|v| v.viewer);
    let attempted = counters.connects_attempted.load(Ordering::Relaxed);
    Ok(ViewReport::new(
        &config,
        started.elapsed(),
        attempted,
        per_viewer,
    ))
}

fn progress_line(c: &ViewCounters, elapsed: Duration) -> String {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    format!(
        "{:>5.0}s watching {} bytes {} tags {} video frames {} stalls {} disconnects {} connect failures {}",
        elapsed.as_secs_f64(),
        load(&c.watching),
        load(&c.bytes),
        load(&c.tags),
        load(&c.video_frames),
        load(&c.stalls),
        load(&c.disconnects),
        load(&c.connect_failures)
    )
}

async fn resolve(target: &Target) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("--url: cannot resolve {}", target.host))?;
    addrs
        .next()
        .with_context(|| format!("--url: {} has no address", target.host))
}

#[derive(Clone)]
struct ViewerSpec {
    viewer: u32,
    addr: SocketAddr,
    source_ip: Option<IpAddr>,
    target: Target,
    connect_timeout: Duration,
    stall_gap: Duration,
    reconnect_delay: Option<Duration>,
    deadline: Instant,
}

/// How one stream ended.
enum StreamEnd {
    /// The run is over.
    Deadline,
    ConnectFailed,
    HttpError,
    ParseError,
    Disconnected,
}

/// One viewer: streams until the deadline, connecting again after each end if configured.
async fn watch(
    spec: ViewerSpec,
    counters: Arc<ViewCounters>,
    limiter: Arc<ConnectLimiter>,
) -> ViewerStats {
    let mut stats = ViewerStats {
        viewer: spec.viewer,
        ..ViewerStats::default()
    };
    loop {
        if tokio::time::timeout_at(spec.deadline, limiter.acquire())
            .await
            .is_err()
        {
            break;
        }
        counters.connects_attempted.fetch_add(1, Ordering::Relaxed);
        let end = stream_once(&spec, &counters, &mut stats).await;
        let counter = match end {
            StreamEnd::Deadline => break,
            StreamEnd::ConnectFailed => {
                stats.connect_failures += 1;
                &counters.connect_failures
            }
            StreamEnd::HttpError => {
                stats.http_errors += 1;
                &counters.http_errors
            }
            StreamEnd::ParseError => {
                stats.parse_errors += 1;
                &counters.parse_errors
            }
            StreamEnd::Disconnected => {
                stats.disconnects += 1;
                &counters.disconnects
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let Some(delay) = spec.reconnect_delay else {
            break;
        };
        if Instant::now() + delay >= spec.deadline {
            break;
        }
        tokio::time::sleep(delay).await;
    }
    stats
}

/// Connects, requests and reads one stream, until it ends or the deadline.
async fn stream_once(
    spec: &ViewerSpec,
    counters: &ViewCounters,
    stats: &mut ViewerStats,
) -> StreamEnd {
    let started = Instant::now();
    let connect = async {
        let tcp = dial(spec.addr, spec.source_ip, spec.connect_timeout).await;
        match tcp {
            Ok(tcp) => {
                let _ = tcp.set_nodelay(true);
                Ok(tcp)
            }
            Err(DialError::Io(_) | DialError::TimedOut) => Err(()),
        }
    };
    let tcp = match tokio::time::timeout_at(spec.deadline, connect).await {
        Err(_) => return StreamEnd::Deadline,
        Ok(Err(())) => return StreamEnd::ConnectFailed,
        Ok(Ok(tcp)) => tcp,
    };
    match &spec.target.tls {
        None => read_stream(tcp, spec, started, counters, stats).await,
        Some((connector, name)) => {
            let handshake =
                tokio::time::timeout(spec.connect_timeout, connector.connect(name.clone(), tcp));
            match tokio::time::timeout_at(spec.deadline, handshake).await {
                Err(_) => StreamEnd::Deadline,
                Ok(Ok(Ok(tls))) => read_stream(tls, spec, started, counters, stats).await,
                Ok(_) => StreamEnd::ConnectFailed,
            }
        }
    }
}

/// Takes one viewer off the `watching` count when its stream ends, however it ends.
struct Watching<'a>(&'a AtomicU64);

impl<'a> Watching<'a> {
    fn start(counter: &'a AtomicU64) -> Watching<'a> {
        counter.fetch_add(1, Ordering::Relaxed);
        Watching(counter)
    }
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sends the GET over `io` and reads the FLV body, counting as it goes.
async fn read_stream<S>(
    io: S,
    spec: &ViewerSpec,
    started: Instant,
    counters: &ViewCounters,
    stats: &mut ViewerStats,
) -> StreamEnd
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let head = async {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .ok()?;
        let driver = tokio::spawn(connection);
        let request = hyper::Request::get(spec.target.path.as_str())
            .header(hyper::header::HOST, spec.target.authority.as_str())
            .header(hyper::header::USER_AGENT, "iothub-loadgen")
            .header(hyper::header::ACCEPT, "*/*")
            .body(Empty::<Bytes>::new())
            .ok()?;
        match sender.send_request(request).await {
            Ok(response) => Some((response, driver)),
            Err(_) => {
                driver.abort();
                None
            }
        }
    };
    let within = tokio::time::timeout(spec.connect_timeout, head);
    let (response, driver) = match tokio::time::timeout_at(spec.deadline, within).await {
        Err(_) => return StreamEnd::Deadline,
        Ok(Err(_) | Ok(None)) => return StreamEnd::ConnectFailed,
        Ok(Ok(Some(r))) => r,
    };
    // Aborts the connection task however this function returns.
    let _driver = AbortOnDrop(driver);
    if response.status() != hyper::StatusCode::OK {
        return StreamEnd::HttpError;
    }
    stats.streams += 1;
    let _watching = Watching::start(&counters.watching);
    let mut body = response.into_body();
    let mut reader = FlvReader::new();
    let mut last_tag: Option<Instant> = None;
    let mut first_frame = false;
    loop {
        let frame = match tokio::time::timeout_at(spec.deadline, body.frame()).await {
            Err(_) => {
                // The run ends during a gap: a stall still going on counts up to now.
                if let Some(last) = last_tag {
                    let gap = Instant::now().saturating_duration_since(last);
                    if gap > spec.stall_gap {
                        count_stall(gap, counters, stats);
                    }
                }
                return StreamEnd::Deadline;
            }
            Ok(None | Some(Err(_))) => return StreamEnd::Disconnected,
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        stats.bytes += data.len() as u64;
        counters
            .bytes
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        let mut tags = 0u64;
        let mut video_frames = 0u64;
        let mut key_frames = 0u64;
        let mut audio_tags = 0u64;
        let fed = reader.feed(&data, |event| {
            if let FlvEvent::Tag(tag) = event {
                tags += 1;
                if tag.video_frame {
                    video_frames += 1;
                }
                if tag.key_frame {
                    key_frames += 1;
                }
                if tag.tag_type == TAG_AUDIO {
                    audio_tags += 1;
                }
            }
        });
        if tags > 0 {
            if let Some(last) = last_tag {
                let gap = now.saturating_duration_since(last);
                if gap > spec.stall_gap {
                    count_stall(gap, counters, stats);
                }
            }
            last_tag = Some(now);
            stats.tags += tags;
            stats.video_frames += video_frames;
            stats.key_frames += key_frames;
            stats.audio_tags += audio_tags;
            counters.tags.fetch_add(tags, Ordering::Relaxed);
            counters
                .video_frames
                .fetch_add(video_frames, Ordering::Relaxed);
            counters.key_frames.fetch_add(key_frames, Ordering::Relaxed);
            if video_frames > 0 && !first_frame {
                first_frame = true;
                let ms = now.saturating_duration_since(started).as_millis();
                if stats.first_frame_ms.len() < MAX_FIRST_FRAMES_KEPT {
                    stats
                        .first_frame_ms
                        .push(u64::try_from(ms).unwrap_or(u64::MAX));
                }
            }
        }
        if fed.is_err() {
            return StreamEnd::ParseError;
        }
    }
}

fn count_stall(gap: Duration, counters: &ViewCounters, stats: &mut ViewerStats) {
    let ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
    stats.stalls += 1;
    stats.stall_ms = stats.stall_ms.saturating_add(ms);
    counters.stalls.fetch_add(1, Ordering::Relaxed);
    counters.stall_ms.fetch_add(ms, Ordering::Relaxed);
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_media;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::rustls;

    fn read_all(data: &[u8], chunk: usize) -> Result<Vec<FlvEvent>, FlvError> {
        let mut reader = FlvReader::new();
        let mut events = Vec::new();
        for piece in data.chunks(chunk) {
            reader.feed(piece, |e| events.push(e))?;
        }
        Ok(events)
    }

    fn tags(events: &[FlvEvent]) -> Vec<TagInfo> {
        events
            .iter()
            .filter_map(|e| match e {
                FlvEvent::Tag(t) => Some(*t),
                FlvEvent::Header { .. } => None,
            })
            .collect()
    }

    // FFmpeg writes onMetaData, the AVC sequence header, the packets, and an AVC end of
    // sequence tag.
    #[test]
    fn ffmpeg_flv_has_metadata_sequence_header_every_packet_and_the_end() {
        let file = test_media::flv_file();
        let data = std::fs::read(file).expect("read the FLV file");
        let (packets, _) = test_media::ffprobe_packets(file);
        let events = read_all(&data, data.len()).expect("valid FLV");
        assert_eq!(tags(&events).len() as u64, packets + 3);
    }

    #[test]
    fn ffmpeg_flv_ends_with_an_end_of_sequence_tag_that_is_no_frame() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let events = read_all(&data, data.len()).expect("valid FLV");
        let last = tags(&events).last().copied();
        assert_eq!(
            last.map(|t| (t.tag_type, t.frame_type, t.video_frame)),
            Some((TAG_VIDEO, 1, false))
        );
    }

    #[test]
    fn ffmpeg_flv_key_frames_match_ffprobe() {
        let file = test_media::flv_file();
        let data = std::fs::read(file).expect("read the FLV file");
        let (_, keys) = test_media::ffprobe_packets(file);
        let events = read_all(&data, data.len()).expect("valid FLV");
        let found = tags(&events).iter().filter(|t| t.key_frame).count() as u64;
        assert_eq!(found, keys);
    }

    #[test]
    fn ffmpeg_flv_video_frames_match_ffprobe() {
        let file = test_media::flv_file();
        let data = std::fs::read(file).expect("read the FLV file");
        let (packets, _) = test_media::ffprobe_packets(file);
        let events = read_all(&data, data.len()).expect("valid FLV");
        let frames = tags(&events).iter().filter(|t| t.video_frame).count() as u64;
        assert_eq!(frames, packets);
    }

    #[test]
    fn ffmpeg_flv_starts_with_header_then_metadata_then_sequence_header() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let events = read_all(&data, data.len()).expect("valid FLV");
        assert_eq!(
            events.first(),
            Some(&FlvEvent::Header {
                audio: false,
                video: true
            })
        );
        let t = tags(&events);
        assert_eq!(t.first().map(|t| t.tag_type), Some(TAG_SCRIPT));
        assert_eq!(t.get(1).map(|t| t.sequence_header), Some(true));
    }

    #[test]
    fn byte_by_byte_reads_the_same_tags() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let whole = read_all(&data, data.len()).expect("valid FLV");
        let bytewise = read_all(&data, 1).expect("valid FLV");
        assert_eq!(whole, bytewise);
    }

    // Header, PreviousTagSize0, then a video tag header with DataSize 0x100001: one byte
    // over 1 MiB.
    #[test]
    fn tag_over_the_bound_is_refused_before_its_body() {
        let data = [
            0x46, 0x4c, 0x56, 0x01, 0x01, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x09,
            0x10, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        let mut reader = FlvReader::with_max_tag(1024 * 1024);
        assert_eq!(
            reader.feed(&data, |_| {}),
            Err(FlvError::TagTooLarge {
                size: 0x10_0001,
                max: 0x10_0000
            })
        );
    }

    #[test]
    fn the_largest_tag_flv_can_describe_is_accepted_by_default() {
        let data = [
            0x46, 0x4c, 0x56, 0x01, 0x01, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x09,
            0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(read_all(&data, data.len()).map(|e| e.len()), Ok(1));
    }

    #[test]
    fn wrong_previous_tag_size_is_refused() {
        // A 1-byte script tag followed by PreviousTagSize 11 instead of 12.
        let data = [
            0x46, 0x4c, 0x56, 0x01, 0x01, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x12,
            0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00,
            0x0b,
        ];
        assert_eq!(
            read_all(&data, data.len()),
            Err(FlvError::PreviousTagSize {
                expected: 12,
                found: 11
            })
        );
    }

    #[test]
    fn http_response_is_not_flv() {
        assert_eq!(
            read_all(b"<html><body>", 12),
            Err(FlvError::Signature(*b"<ht"))
        );
    }

    #[test]
    fn timestamp_takes_the_extended_byte_as_the_high_one() {
        // Video tag, DataSize 1, timestamp 0x123456 with extension 0x01 = 0x01123456.
        let data = [
            0x46, 0x4c, 0x56, 0x01, 0x01, 0x00, 0x00, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00, 0x09,
            0x00, 0x00, 0x01, 0x12, 0x34, 0x56, 0x01, 0x00, 0x00, 0x00, 0x27,
        ];
        let events = read_all(&data, data.len()).expect("valid FLV");
        assert_eq!(
            tags(&events).first().map(|t| t.timestamp),
            Some(0x0112_3456)
        );
    }

    /// Answers one GET on `socket`: 404 for paths other than `/live/1/x.flv`, otherwise
    /// `body` (chunked, or raw until close), pausing `pause` after `pause_after` bytes.
    async fn answer<S>(
        mut socket: S,
        body: Arc<Vec<u8>>,
        pause_after: usize,
        pause: Duration,
        chunked: bool,
    ) where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16_384 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if !head.starts_with(b"GET /live/1/x.flv HTTP/1.1\r\n") {
            let _ = socket
                .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        }
        let framing: &[u8] = if chunked {
            b"transfer-encoding: chunked\r\n"
        } else {
            b"connection: close\r\n"
        };
        let mut response = b"HTTP/1.1 200 OK\r\ncontent-type: video/x-flv\r\n".to_vec();
        response.extend_from_slice(framing);
        response.extend_from_slice(b"\r\n");
        let _ = socket.write_all(&response).await;
        let (first, rest) = body.split_at(pause_after.min(body.len()));
        for (i, part) in [first, rest].into_iter().enumerate() {
            if i == 1 {
                tokio::time::sleep(pause).await;
            }
            for chunk in part.chunks(4096) {
                let mut out = Vec::with_capacity(chunk.len() + 16);
                if chunked {
                    out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                }
                out.extend_from_slice(chunk);
                if chunked {
                    out.extend_from_slice(b"\r\n");
                }
                if socket.write_all(&out).await.is_err() {
                    return;
                }
            }
        }
        if chunked {
            let _ = socket.write_all(b"0\r\n\r\n").await;
        }
        let _ = socket.shutdown().await;
    }

    /// Serves `body` over HTTP with chunked transfer encoding (see [`answer`]).
    async fn serve(body: Vec<u8>, pause_after: usize, pause: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(answer(socket, body.clone(), pause_after, pause, true));
            }
        });
        addr
    }

    /// Serves `body` over HTTPS, raw until close, with the test certificate.
    async fn serve_tls(body: Vec<u8>) -> SocketAddr {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let files = test_media::tls_files();
        let chain = CertificateDer::pem_file_iter(&files.chain)
            .expect("certificate chain")
            .collect::<Result<Vec<_>, _>>()
            .expect("certificates");
        let key = PrivateKeyDer::from_pem_file(&files.key).expect("private key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let body = Arc::new(body);
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let body = body.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(socket).await {
                        answer(tls, body, 0, Duration::ZERO, false).await;
                    }
                });
            }
        });
        addr
    }

    fn once(addr: SocketAddr, path: &str, viewers: u32) -> ViewerConfig {
        let url: Uri = format!("http://{addr}{path}").parse().expect("URL");
        let mut config = ViewerConfig::new(url, viewers, Duration::from_secs(5));
        config.reconnect_delay = None;
        config.connect_rate = 0.0;
        config
    }

    #[tokio::test]
    async fn every_viewer_receives_the_whole_file() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let (packets, keys) = test_media::ffprobe_packets(test_media::flv_file());
        let addr = serve(data.clone(), 0, Duration::ZERO).await;
        let report = run(once(addr, "/live/1/x.flv", 3)).await.expect("run");
        for v in &report.per_viewer {
            assert_eq!(v.bytes, data.len() as u64, "viewer {}", v.viewer);
            assert_eq!(v.tags, packets + 3, "viewer {}", v.viewer);
            assert_eq!(v.key_frames, keys, "viewer {}", v.viewer);
            assert_eq!(v.first_frame_ms.len(), 1, "viewer {}", v.viewer);
        }
        assert_eq!(report.per_viewer.len(), 3);
        assert_eq!(report.bytes, 3 * data.len() as u64);
        assert_eq!(report.first_frame.map(|f| f.streams), Some(3));
        // The server closes after the file: each stream ended before the run did.
        assert_eq!(report.disconnects, 3);
        assert_eq!(report.stalls, 0);
    }

    #[tokio::test]
    async fn a_pause_longer_than_the_gap_is_one_stall() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let addr = serve(data.clone(), data.len() / 2, Duration::from_millis(1300)).await;
        let report = run(once(addr, "/live/1/x.flv", 1)).await.expect("run");
        assert_eq!(report.stalls, 1);
        assert!(report.stall_ms >= 1000, "{}", report.table());
        assert_eq!(report.viewers_stalled, 1);
        assert_eq!(report.bytes, data.len() as u64);
    }

    #[tokio::test]
    async fn not_found_is_an_http_error_not_a_stream() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let addr = serve(data, 0, Duration::ZERO).await;
        let report = run(once(addr, "/live/2/x.flv", 2)).await.expect("run");
        assert_eq!(report.http_errors, 2);
        assert_eq!(report.streams, 0);
        assert_eq!(report.viewers_without_video, 2);
    }

    #[tokio::test]
    async fn refused_connections_are_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        drop(listener);
        let report = run(once(addr, "/live/1/x.flv", 2)).await.expect("run");
        assert_eq!(report.connect_failures, 2);
    }

    #[tokio::test]
    async fn https_viewers_trust_the_ca_file_and_read_until_close() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let addr = serve_tls(data.clone()).await;
        let mut config = once(addr, "/live/1/x.flv", 2);
        config.url = format!("https://localhost:{}/live/1/x.flv", addr.port())
            .parse()
            .expect("URL");
        config.ca_file = Some(test_media::tls_files().ca.clone());
        let report = run(config).await.expect("run");
        assert_eq!(report.bytes, 2 * data.len() as u64, "{}", report.table());
        assert_eq!(report.parse_errors, 0);
    }

    #[tokio::test]
    async fn https_viewers_refuse_a_server_the_ca_did_not_sign() {
        let data = std::fs::read(test_media::flv_file()).expect("read the FLV file");
        let addr = serve_tls(data).await;
        let mut config = once(addr, "/live/1/x.flv", 1);
        config.url = format!("https://localhost:{}/live/1/x.flv", addr.port())
            .parse()
            .expect("URL");
        config.ca_file = Some(test_media::tls_files().other_ca.clone());
        let report = run(config).await.expect("run");
        assert_eq!(report.connect_failures, 1);
        assert_eq!(report.bytes, 0);
    }

    #[test]
    fn https_without_a_ca_file_is_refused() {
        let url: Uri = "https://127.0.0.1:8443/1/x.flv".parse().expect("URL");
        let config = ViewerConfig::new(url, 1, Duration::from_secs(1));
        let err = config.validate().map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err("--url https://127.0.0.1:8443/1/x.flv: https needs --ca-file".to_owned())
        );
    }
}
