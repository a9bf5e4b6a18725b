//! JT/T 1078 ingest: the live (10000) and playback (10001) ports, over TCP and UDP. A
//! dashcam told to stream by 0x9101/0x9201 connects and sends RTP-like packets; each
//! (connection, channel) becomes the publisher of the stream `<ch>/<imei>` or
//! `<ch>/<imei>.history`, the IMEI read from the packets' SIM by the JT/T 808 port's
//! `new_imei_rule`.
//!
//! Only devices online may publish (on this node, or in cluster mode on any node, since the
//! balancer may bring the media connection to another node than the signalling one): a
//! connection whose SIM names a device without a live JT/T 808 session is closed
//! (`iothub_media_ingest_refused_total`). A
//! malformed packet closes its connection (`iothub_media_ingest_errors_total{kind}`); a
//! frame over `max_frame_bytes` is dropped and the stream goes on from the next key frame.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use iothub::codec::jt808::phone_to_imei;
use iothub::imei::Imei;
use iothub::media::audio::{strip_hisilicon, DeviceAudioCodec};
use iothub::media::flv::{self, HevcTagging};
use iothub::media::jt1078::{DataType, Decoder, Packet, Reassembler};
use iothub::media::mux::{Jt1078Muxer, MuxOut};
use iothub::media::{adts, FlvTag, TagKind};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::hub::{MediaHub, Refusal, Source, StreamPublisher};
use super::keys::StreamKey;
use super::transcode::AacTranscoder;
use crate::config::AudioPolicy;

/// A connection that sends nothing for this long is closed (devices stream continuously).
const READ_IDLE: Duration = Duration::from_secs(30);
/// A UDP source silent this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(30);
/// Channels one connection may carry.
const MAX_CHANNELS: usize = 16;
/// Bytes read ahead of the decoder: one packet is at most 34 + 65,535 bytes.
const MAX_BUFFERED: usize = 256 * 1024;
/// Most open JT/T 1078 TCP connections per port.
const MAX_CONNECTIONS: usize = 4096;

/// What every ingest of the node shares.
pub struct IngestContext {
    pub hub: MediaHub,
    /// The JT/T 808 port's rule for reading IMEIs from SIM numbers.
    pub new_imei_rule: bool,
}

/// Why an ingest connection ended.
#[derive(Debug, thiserror::Error)]
enum IngestError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("SIM {0} does not map to a device id")]
    BadSim(String),
    #[error("device {0} is not online on this node")]
    Unknown(Imei),
    #[error("stream {0} refused: {1}")]
    Refused(StreamKey, Refusal),
    #[error("more than {MAX_CHANNELS} channels on one connection")]
    TooManyChannels,
    #[error("stream ended")]
    StreamEnded,
}

impl IngestError {
    fn label(&self) -> &'static str {
        match self {
            IngestError::Malformed(_) => "malformed",
            IngestError::BadSim(_) => "bad_sim",
            IngestError::Unknown(_) => "unknown_device",
            IngestError::Refused(..) => "refused",
            IngestError::TooManyChannels => "too_many_channels",
            IngestError::StreamEnded => "stream_ended",
        }
    }
}

/// One channel of an ingest: its publisher and how its frames become FLV tags.
struct ChannelIngest {
    publisher: StreamPublisher,
    muxer: Jt1078Muxer,
    audio: AudioOut,
}

enum AudioOut {
    /// Not decided until the first audio frame names its codec.
    Undecided,
    Transcode(Box<AacTranscoder>),
    G711 {
        alaw: bool,
    },
    Aac {
        header_sent: bool,
    },
    Drop,
}

/// The state of one TCP connection or UDP source.
struct Ingest {
    ctx: Arc<IngestContext>,
    playback: bool,
    decoder: Decoder,
    reassembler: Reassembler,
    channels: HashMap<u8, ChannelIngest>,
    started: Instant,
}

impl Ingest {
    /// `datagrams`: each buffer fed is whole UDP datagrams.
    fn new(ctx: Arc<IngestContext>, playback: bool, datagrams: bool) -> Ingest {
        let max_frame = ctx.hub.config().max_frame_bytes;
        let decoder = if datagrams {
            Decoder::new().datagrams()
        } else {
            Decoder::new()
        };
        Ingest {
            ctx,
            playback,
            decoder,
            reassembler: Reassembler::new(max_frame),
            channels: HashMap::new(),
            started: Instant::now(),
        }
    }

    /// Decodes and publishes what `buf` holds; leaves an incomplete packet in it.
    async fn feed(&mut self, buf: &mut BytesMut) -> Result<(), IngestError> {
        loop {
            let packet = match self.decoder.decode(buf) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(()),
                Err(e) => return Err(IngestError::Malformed(e.to_string())),
            };
            self.packet(packet).await?;
        }
    }

    async fn packet(&mut self, packet: Packet) -> Result<(), IngestError> {
        metrics::counter!("iothub_media_ingest_packets_total", "source" => "jt1078").increment(1);
        if packet.data_type == DataType::Transparent {
            return Ok(());
        }
        let channel = packet.channel;
        if !self.channels.contains_key(&channel) {
            self.open_channel(&packet).await?;
        }
        let frame = match self.reassembler.push(packet) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(e) => {
                metrics::counter!("iothub_media_ingest_errors_total", "kind" => "reassembly")
                    .increment(1);
                tracing::debug!(error = %e, "JT/T 1078 frame dropped");
                return Ok(());
            }
        };
        let arrival_ms = self.started.elapsed().as_millis() as u64;
        let Some(ingest) = self.channels.get_mut(&channel) else {
            return Ok(());
        };
        for out in ingest.muxer.push(&frame, arrival_ms) {
            let tags = match out {
                MuxOut::Tag(tag) => vec![tag],
                MuxOut::Audio {
                    payload_type,
                    timestamp,
                    data,
                } => ingest.audio_tags(payload_type, timestamp, &data, self.ctx.hub.config().audio),
            };
            for tag in tags {
                if !ingest.publisher.push(tag) {
                    return Err(IngestError::StreamEnded);
                }
            }
        }
        Ok(())
    }

    async fn open_channel(&mut self, packet: &Packet) -> Result<(), IngestError> {
        if self.channels.len() >= MAX_CHANNELS {
            return Err(IngestError::TooManyChannels);
        }
        let digits = packet.sim.digits();
        let imei = phone_to_imei(&digits, self.ctx.new_imei_rule)
            .ok_or_else(|| IngestError::BadSim(digits.clone()))?;
        let hub = &self.ctx.hub;
        if !hub.signals().online(imei).await {
            return Err(IngestError::Unknown(imei));
        }
        let key = StreamKey::jt1078(imei, packet.channel, self.playback);
        let publisher = hub
            .publish(key, Source::Jt1078)
            .await
            .map_err(|r| IngestError::Refused(key, r))?;
        tracing::info!(stream = %key, "JT/T 1078 stream started");
        let tagging = if hub.config().hevc_enhanced_flv {
            HevcTagging::Enhanced
        } else {
            HevcTagging::CodecId12
        };
        self.channels.insert(
            packet.channel,
            ChannelIngest {
                publisher,
                muxer: Jt1078Muxer::new(tagging),
                audio: AudioOut::Undecided,
            },
        );
        Ok(())
    }
}

impl ChannelIngest {
    /// One device audio frame as FLV audio tags under the configured policy.
    fn audio_tags(
        &mut self,
        payload_type: u8,
        timestamp: u32,
        data: &[u8],
        policy: AudioPolicy,
    ) -> Vec<FlvTag> {
        let data = strip_hisilicon(data);
        if matches!(self.audio, AudioOut::Undecided) {
            self.audio = match (DeviceAudioCodec::from_payload_type(payload_type), policy) {
                (None, _) | (_, AudioPolicy::Drop) => AudioOut::Drop,
                (Some(DeviceAudioCodec::Aac), _) => AudioOut::Aac { header_sent: false },
                (Some(DeviceAudioCodec::G711A), AudioPolicy::PassThrough) => {
                    AudioOut::G711 { alaw: true }
                }
                (Some(DeviceAudioCodec::G711U), AudioPolicy::PassThrough) => {
                    AudioOut::G711 { alaw: false }
                }
                (Some(_), AudioPolicy::PassThrough) => AudioOut::Drop,
                (Some(codec), AudioPolicy::Transcode) => match AacTranscoder::new(codec) {
                    Ok(t) => AudioOut::Transcode(Box::new(t)),
                    Err(e) => {
                        tracing::warn!(error = %e, "audio transcoder unavailable, audio dropped");
                        AudioOut::Drop
                    }
                },
            };
        }
        match &mut self.audio {
            AudioOut::Undecided | AudioOut::Drop => Vec::new(),
            AudioOut::G711 { alaw } => vec![audio_tag(timestamp, flv::g711_frame(*alaw, data))],
            AudioOut::Transcode(t) => match t.push(data, timestamp) {
                Ok(tags) => {
                    metrics::counter!("iothub_media_transcoded_frames_total").increment(1);
                    tags
                }
                Err(e) => {
                    metrics::counter!("iothub_media_transcode_errors_total").increment(1);
                    tracing::debug!(error = %e, "audio frame not transcoded");
                    Vec::new()
                }
            },
            AudioOut::Aac { header_sent } => {
                let Some((config, raw)) = adts::split(data) else {
                    return Vec::new();
                };
                let mut tags = Vec::with_capacity(2);
                if !*header_sent {
                    *header_sent = true;
                    tags.push(audio_tag(timestamp, flv::aac_sequence_header(&config)));
                }
                tags.push(audio_tag(timestamp, flv::aac_frame(raw)));
                tags
            }
        }
    }
}

fn audio_tag(timestamp: u32, body: bytes::Bytes) -> FlvTag {
    FlvTag {
        kind: TagKind::Audio,
        timestamp,
        body,
    }
}

/// Serves JT/T 1078 over TCP on `listener` until the task is aborted.
pub async fn serve_tcp(listener: TcpListener, ctx: Arc<IngestContext>, playback: bool) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "JT/T 1078 accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("iothub_media_ingest_refused_total", "reason" => "connections")
                .increment(1);
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            metrics::gauge!("iothub_media_ingest_connections").increment(1.0);
            if let Err(e) = serve_connection(stream, ctx, playback).await {
                metrics::counter!("iothub_media_ingest_errors_total", "kind" => e.label())
                    .increment(1);
                tracing::info!(%peer, error = %e, "JT/T 1078 connection closed");
            }
            metrics::gauge!("iothub_media_ingest_connections").decrement(1.0);
            drop(permit);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    ctx: Arc<IngestContext>,
    playback: bool,
) -> Result<(), IngestError> {
    let mut ingest = Ingest::new(ctx, playback, false);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if buf.len() >= MAX_BUFFERED {
            return Err(IngestError::Malformed(format!(
                "{} bytes without a whole packet",
                buf.len()
            )));
        }
        buf.reserve(16 * 1024);
        let read = tokio::time::timeout(READ_IDLE, stream.read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) | Err(_) => return Ok(()),
            Ok(Ok(n)) => {
                metrics::counter!("iothub_media_ingest_bytes_total", "source" => "jt1078")
                    .increment(n as u64);
            }
            Ok(Err(_)) => return Ok(()),
        }
        ingest.feed(&mut buf).await?;
    }
}

/// Serves JT/T 1078 over UDP on `socket`: each source address is one ingest.
pub async fn serve_udp(socket: UdpSocket, ctx: Arc<IngestContext>, playback: bool) {
    let mut sources: HashMap<SocketAddr, (Ingest, Instant)> = HashMap::new();
    let mut datagram = vec![0u8; 65_536];
    let mut last_sweep = Instant::now();
    loop {
        let (n, from) = match socket.recv_from(&mut datagram).await {
            Ok(received) => received,
            Err(e) => {
                tracing::debug!(error = %e, "JT/T 1078 UDP receive failed");
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_sweep) > UDP_IDLE {
            sources.retain(|_, (_, seen)| now.duration_since(*seen) < UDP_IDLE);
            last_sweep = now;
        }
        if !sources.contains_key(&from) && sources.len() >= ctx.hub.config().max_streams {
            metrics::counter!("iothub_media_ingest_refused_total", "reason" => "udp_sources")
                .increment(1);
            continue;
        }
        let (ingest, seen) = sources
            .entry(from)
            .or_insert_with(|| (Ingest::new(ctx.clone(), playback, true), now));
        *seen = now;
        let mut buf = BytesMut::from(&datagram[..n]);
        if let Err(e) = ingest.feed(&mut buf).await {
            metrics::counter!("iothub_media_ingest_errors_total", "kind" => e.label()).increment(1);
            tracing::info!(%from, error = %e, "JT/T 1078 UDP source dropped");
            sources.remove(&from);
        }
    }
}
