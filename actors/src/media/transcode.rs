//! Device audio to AAC-LC FLV tags: browsers (flv.js, mpegts.js) play AAC and nothing a
//! dashcam sends, so FLV egress re-encodes G.711, G.726 and IMA ADPCM.
//!
//! The path is decode to 8 kHz PCM ([`iothub::media::audio`]), upsample to 16 kHz by linear
//! interpolation (the midpoint between neighbours), then Fraunhofer's AAC-LC encoder at
//! 24 kbit/s mono. Linear interpolation leaves the image of a 1 kHz tone 34 dB down and that
//! of 3 kHz, the top of telephone speech, 11 dB down: enough for listening in on a cab, and
//! a short FIR is the upgrade if it ever is not. 16 kHz rather than 8 kHz because some
//! browsers' Media Source Extensions play 8 kHz AAC badly. Each AAC frame is 1024 samples,
//! 64 ms.
//!
//! CPU is bounded by bounding the PCM waiting for the encoder: a flood (a device sending
//! faster than real time, or one giant frame) keeps only the newest 2 s and counts what it
//! drops, so one call never encodes more than 2 s of audio.

use bytes::{BufMut, Bytes, BytesMut};
use fdk_aac::enc::{AudioObjectType, BitRate, ChannelMode, Encoder, EncoderParams, Transport};
use iothub::media::audio::{AudioDecoder, AudioError, DeviceAudioCodec};
use iothub::media::{FlvTag, TagKind};
use std::collections::VecDeque;
use thiserror::Error;

/// Sample rate of the AAC iothub sends.
pub const OUTPUT_SAMPLE_RATE: u32 = 16_000;
/// AAC bitrate: clear speech at 16 kHz mono.
const BITRATE: u32 = 24_000;
/// PCM samples (at the output rate) kept waiting at most: 2 s.
const MAX_PENDING_SAMPLES: usize = 2 * OUTPUT_SAMPLE_RATE as usize;
/// An input timestamp this far ahead of the audio's own clock means the device paused
/// sending; the clock jumps to it so audio stays in step with video.
const RESYNC_AHEAD_MS: i64 = 1000;
/// FLV audio tag byte 0 for AAC (SoundFormat 10; the rate/size/type bits are fixed for AAC).
const FLV_AAC: u8 = 0xAF;
/// Room for one encoded AAC frame: 6144 bits per channel is the AAC-LC maximum.
const MAX_AAC_FRAME_BYTES: usize = 768;

/// Why a transcoder could not be built or could not take a frame.
#[derive(Debug, Error)]
pub enum TranscodeError {
    #[error("{0:?} audio needs no transcoding to AAC")]
    AlreadyAac(DeviceAudioCodec),
    #[error("AAC encoder: {0}")]
    Encoder(String),
    #[error(transparent)]
    Decode(#[from] AudioError),
}

fn encoder_error(error: fdk_aac::enc::EncoderError) -> TranscodeError {
    TranscodeError::Encoder(error.to_string())
}

/// Device audio (any DeviceAudioCodec but Aac) → AAC-LC FLV tags, with bounded CPU.
pub struct AacTranscoder {
    decoder: AudioDecoder,
    encoder: Encoder,
    /// The AudioSpecificConfig, sent once as the sequence header.
    audio_specific_config: Bytes,
    sequence_header_sent: bool,
    /// Samples per AAC frame (1024 for AAC-LC).
    frame_samples: usize,
    /// Upsampled PCM waiting for a whole AAC frame.
    pending: VecDeque<i16>,
    /// The last 8 kHz sample, the left neighbour of the next frame's first midpoint.
    previous_sample: Option<i16>,
    /// Scratch for decoded 8 kHz PCM and for one encoder input frame.
    decoded: Vec<i16>,
    frame: Vec<i16>,
    /// Stream time (ms) of output sample 0, and samples accepted and encoded since then.
    origin_ms: Option<u32>,
    samples_in: u64,
    samples_encoded: u64,
    dropped_samples: u64,
}

impl std::fmt::Debug for AacTranscoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AacTranscoder")
            .field("pending", &self.pending.len())
            .field("samples_encoded", &self.samples_encoded)
            .field("dropped_samples", &self.dropped_samples)
            .finish_non_exhaustive()
    }
}

impl AacTranscoder {
    /// A transcoder for device audio in `codec`; AAC itself is refused (pass it through).
    pub fn new(codec: DeviceAudioCodec) -> Result<Self, TranscodeError> {
        let decoder = AudioDecoder::new(codec).ok_or(TranscodeError::AlreadyAac(codec))?;
        let encoder = Encoder::new(EncoderParams {
            bit_rate: BitRate::Cbr(BITRATE),
            sample_rate: OUTPUT_SAMPLE_RATE,
            transport: Transport::Raw,
            channels: ChannelMode::Mono,
            audio_object_type: AudioObjectType::Mpeg4LowComplexity,
        })
        .map_err(encoder_error)?;
        let info = encoder.info().map_err(encoder_error)?;
        let config_len = usize::try_from(info.confSize).unwrap_or(usize::MAX);
        let audio_specific_config = info
            .confBuf
            .get(..config_len)
            .filter(|config| !config.is_empty())
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| TranscodeError::Encoder("no AudioSpecificConfig".into()))?;
        let frame_samples = match usize::try_from(info.frameLength) {
            Ok(len) if len > 0 && len <= MAX_PENDING_SAMPLES => len,
            _ => return Err(TranscodeError::Encoder("unexpected frame length".into())),
        };
        Ok(Self {
            decoder,
            encoder,
            audio_specific_config,
            sequence_header_sent: false,
            frame_samples,
            pending: VecDeque::with_capacity(frame_samples * 2),
            previous_sample: None,
            decoded: Vec::new(),
            frame: Vec::with_capacity(frame_samples),
            origin_ms: None,
            samples_in: 0,
            samples_encoded: 0,
            dropped_samples: 0,
        })
    }

    /// One device frame (HiSilicon prefix already stripped) at `timestamp_ms` (stream clock)
    /// → zero or more FLV audio tags; the first call's output starts with the AAC sequence
    /// header tag (body 0xAF 0x00 + AudioSpecificConfig). Body of frames: 0xAF 0x01 + raw
    /// AAC.
    pub fn push(&mut self, frame: &[u8], timestamp_ms: u32) -> Result<Vec<FlvTag>, TranscodeError> {
        self.decoded.clear();
        self.decoder.decode(frame, &mut self.decoded)?;

        let mut tags = Vec::new();
        if !self.sequence_header_sent {
            self.sequence_header_sent = true;
            tags.push(self.tag(timestamp_ms, 0x00, &self.audio_specific_config));
        }
        self.follow_clock(timestamp_ms);
        self.upsample_into_pending();

        while self.pending.len() >= self.frame_samples {
            self.frame.clear();
            self.frame.extend(self.pending.drain(..self.frame_samples));
            let timestamp = self.timestamp_of(self.samples_encoded);
            let mut out = [0u8; MAX_AAC_FRAME_BYTES];
            let info = self
                .encoder
                .encode(&self.frame, &mut out)
                .map_err(encoder_error)?;
            // The encoder takes whole frames; anything it left is put back in order.
            if let Some(left) = self.frame.get(info.input_consumed..) {
                for &sample in left.iter().rev() {
                    self.pending.push_front(sample);
                }
            }
            self.samples_encoded += info.input_consumed as u64;
            if let Some(aac) = out.get(..info.output_size).filter(|aac| !aac.is_empty()) {
                tags.push(self.tag(timestamp, 0x01, aac));
            }
            if info.input_consumed == 0 {
                break;
            }
        }
        Ok(tags)
    }

    /// Output samples dropped because more than 2 s of audio was waiting.
    pub fn dropped_samples(&self) -> u64 {
        self.dropped_samples
    }

    fn tag(&self, timestamp: u32, packet_type: u8, payload: &[u8]) -> FlvTag {
        let mut body = BytesMut::with_capacity(2 + payload.len());
        body.put_u8(FLV_AAC);
        body.put_u8(packet_type);
        body.put_slice(payload);
        FlvTag {
            kind: TagKind::Audio,
            timestamp,
            body: body.freeze(),
        }
    }

    /// Stream time of output sample `sample`.
    fn timestamp_of(&self, sample: u64) -> u32 {
        let offset_ms = sample * 1000 / u64::from(OUTPUT_SAMPLE_RATE);
        // FLV time wraps at 2^32 ms, so truncating the offset is the wrap.
        self.origin_ms.unwrap_or(0).wrapping_add(offset_ms as u32)
    }

    /// Starts the audio clock at the first frame, and moves it forward when the device
    /// resumes after a pause; never backward, so output timestamps only grow.
    fn follow_clock(&mut self, timestamp_ms: u32) {
        let Some(origin) = self.origin_ms else {
            self.origin_ms = Some(timestamp_ms);
            return;
        };
        let expected = self.timestamp_of(self.samples_in);
        let ahead = i64::from(timestamp_ms.wrapping_sub(expected) as i32);
        if ahead > RESYNC_AHEAD_MS {
            self.origin_ms = Some(origin.wrapping_add(ahead as u32));
        }
    }

    /// Doubles the rate of `decoded` into `pending`: each input sample is preceded by the
    /// midpoint with its predecessor. Keeps only the newest 2 s waiting.
    fn upsample_into_pending(&mut self) {
        let added = self.decoded.len() * 2;
        self.samples_in += added as u64;
        let mut previous = self.previous_sample.or(self.decoded.first().copied());
        // Input that could not survive the cap is skipped rather than interpolated.
        let keep_input = (MAX_PENDING_SAMPLES / 2).min(self.decoded.len());
        let skip = self.decoded.len() - keep_input;
        if skip > 0 {
            previous = self.decoded.get(skip - 1).copied();
            self.dropped_samples += (skip * 2) as u64;
        }
        for &sample in self.decoded.iter().skip(skip) {
            let left = previous.unwrap_or(sample);
            self.pending
                .push_back(((i32::from(left) + i32::from(sample)) / 2) as i16);
            self.pending.push_back(sample);
            previous = Some(sample);
        }
        self.previous_sample = previous;
        let excess = self.pending.len().saturating_sub(MAX_PENDING_SAMPLES);
        if excess > 0 {
            self.pending.drain(..excess);
            self.dropped_samples += excess as u64;
        }
        // Dropped samples are never encoded, so the encoded count skips them to keep the
        // clock on the samples that are.
        self.samples_encoded = self.samples_in - self.pending.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iothub::media::audio::strip_hisilicon;
    use std::process::Command;

    /// Runs an ffmpeg tool and returns its stdout, failing with its stderr.
    fn run(tool: &str, args: &[&str]) -> Vec<u8> {
        let output = Command::new(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool} is needed (Debian package ffmpeg): {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// `seconds` of a `hz` tone as 8 kHz G.711 A-law, made by ffmpeg.
    fn alaw_tone(hz: u32, seconds: u32) -> Vec<u8> {
        let source = format!("sine=f={hz}:sample_rate=8000");
        let duration = seconds.to_string();
        run(
            "ffmpeg",
            &[
                "-v", "error", "-f", "lavfi", "-i", &source, "-t", &duration, "-ac", "1", "-c:a",
                "pcm_alaw", "-f", "alaw", "-",
            ],
        )
    }

    /// 320-byte (40 ms) device frames with the HiSilicon prefix, stripped again as ingest
    /// does, pushed at their stream times.
    fn transcode_as_device_frames(alaw: &[u8]) -> (AacTranscoder, Vec<FlvTag>) {
        let mut transcoder = AacTranscoder::new(DeviceAudioCodec::G711A).expect("transcoder");
        let mut tags = Vec::new();
        for (n, chunk) in alaw.chunks_exact(320).enumerate() {
            let mut framed = vec![0x00, 0x01, 0xA0, 0x00];
            framed.extend_from_slice(chunk);
            let frame = strip_hisilicon(&framed);
            assert_eq!(frame.len(), 320, "prefix stripped");
            let timestamp = 40 * n as u32;
            tags.extend(transcoder.push(frame, timestamp).expect("frame transcodes"));
        }
        (transcoder, tags)
    }

    /// The FLV file a viewer would receive: header, then each tag and its trailing size.
    fn flv_file(tags: &[FlvTag]) -> Vec<u8> {
        let mut flv = b"FLV\x01\x04\x00\x00\x00\x09\x00\x00\x00\x00".to_vec();
        for tag in tags {
            let size = tag.body.len() as u32;
            flv.push(tag.kind as u8);
            flv.extend_from_slice(&size.to_be_bytes()[1..]);
            flv.extend_from_slice(&tag.timestamp.to_be_bytes()[1..]);
            flv.push((tag.timestamp >> 24) as u8);
            flv.extend_from_slice(&[0, 0, 0]);
            flv.extend_from_slice(&tag.body);
            flv.extend_from_slice(&(11 + size).to_be_bytes());
        }
        flv
    }

    fn write_flv(tags: &[FlvTag]) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new()
            .suffix(".flv")
            .tempfile()
            .expect("temp file");
        std::io::Write::write_all(&mut file, &flv_file(tags)).expect("FLV written");
        file
    }

    fn path(file: &tempfile::NamedTempFile) -> &str {
        file.path().to_str().expect("temp path is UTF-8")
    }

    #[test]
    fn first_tag_is_the_aac_sequence_header() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 1));
        let first = tags.first().expect("tags");
        // AAC-LC (2), 16 kHz (index 8), mono: 00010 1000 0001 000.
        assert_eq!(&first.body[..], &[0xAF, 0x00, 0x14, 0x08]);
    }

    #[test]
    fn frames_are_raw_aac_tags() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 1));
        let not_raw: Vec<_> = tags[1..]
            .iter()
            .filter(|t| t.kind != TagKind::Audio || t.body[..2] != [0xAF, 0x01])
            .collect();
        assert!(not_raw.is_empty(), "{not_raw:?}");
    }

    #[test]
    fn one_aac_frame_per_64_ms_with_timestamps_from_the_stream_clock() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 3));
        let timestamps: Vec<u32> = tags[1..].iter().map(|t| t.timestamp).collect();
        // 3 s at 16 kHz is 46 whole frames of 1024 samples, 64 ms apart from 0.
        let expected: Vec<u32> = (0..46).map(|n| n * 64).collect();
        assert_eq!(timestamps, expected);
    }

    #[test]
    fn ffprobe_sees_mono_aac() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 3));
        let file = write_flv(&tags);
        let probe = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "a:0",
                "-show_entries",
                "stream=codec_name,channels,sample_rate",
                "-of",
                "csv=p=0",
                path(&file),
            ],
        );
        assert_eq!(String::from_utf8_lossy(&probe).trim(), "aac,16000,1");
    }

    #[test]
    fn ffmpeg_decodes_every_frame_without_error() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 3));
        let file = write_flv(&tags);
        let output = Command::new("ffmpeg")
            .args(["-v", "error", "-i", path(&file), "-f", "null", "-"])
            .output()
            .expect("ffmpeg is needed (Debian package ffmpeg)");
        assert!(
            output.status.success(),
            "ffmpeg exit status {}",
            output.status
        );
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "ffmpeg errors");
    }

    #[test]
    fn the_tone_survives_at_1000_hz() {
        let (_, tags) = transcode_as_device_frames(&alaw_tone(1000, 3));
        let file = write_flv(&tags);
        let pcm = run(
            "ffmpeg",
            &[
                "-v",
                "error",
                "-i",
                path(&file),
                "-f",
                "s16le",
                "-ac",
                "1",
                "-",
            ],
        );
        let samples: Vec<i16> = pcm
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        // Skip the encoder's start-up; count sign changes over the steady middle.
        let steady = &samples[4000..samples.len() - 4000];
        let crossings = steady
            .windows(2)
            .filter(|w| (w[0] < 0) != (w[1] < 0))
            .count();
        let hz = crossings as f64 / 2.0 / (steady.len() as f64 / 16000.0);
        assert!((hz - 1000.0).abs() < 20.0, "dominant frequency {hz:.0} Hz");
    }

    #[test]
    fn a_flood_keeps_only_the_newest_two_seconds() {
        let mut transcoder = AacTranscoder::new(DeviceAudioCodec::G711A).expect("transcoder");
        // Ten seconds in one frame: 160 000 samples at 16 kHz, of which 32 000 are kept.
        let tags = transcoder
            .push(&alaw_tone(1000, 10), 0)
            .expect("frame transcodes");
        assert_eq!(transcoder.dropped_samples(), 128_000);
        // The sequence header, then 31 whole frames of the 2 s kept.
        assert_eq!(tags.len(), 1 + 31);
    }

    #[test]
    fn a_resumed_device_moves_the_clock_forward() {
        let alaw = alaw_tone(1000, 1);
        let mut transcoder = AacTranscoder::new(DeviceAudioCodec::G711A).expect("transcoder");
        let mut timestamps = Vec::new();
        for (n, frame) in alaw.chunks_exact(320).enumerate() {
            // Ten frames, then a 5 s silence from the device, then the rest.
            let timestamp = 40 * n as u32 + if n >= 10 { 5000 } else { 0 };
            let tags = transcoder.push(frame, timestamp).expect("frame transcodes");
            timestamps.extend(
                tags.iter()
                    .skip_while(|t| t.is_sequence_header())
                    .map(|t| t.timestamp),
            );
        }
        assert!(timestamps.windows(2).all(|w| w[0] < w[1]), "{timestamps:?}");
        assert!(
            timestamps.last().is_some_and(|&t| t > 5000),
            "{timestamps:?}"
        );
    }

    #[test]
    fn a_frame_that_fails_to_decode_does_not_lose_the_sequence_header() {
        let mut transcoder = AacTranscoder::new(DeviceAudioCodec::ImaAdpcm).expect("transcoder");
        let failed = transcoder.push(&[0x00, 0x00], 0);
        assert!(
            matches!(failed, Err(TranscodeError::Decode(_))),
            "{failed:?}"
        );
        let tags = transcoder
            .push(&[0x00, 0x00, 0x00, 0x00, 0x12], 40)
            .expect("frame transcodes");
        assert!(
            tags.first().is_some_and(FlvTag::is_sequence_header),
            "{tags:?}"
        );
    }

    #[test]
    fn a_transcoder_can_move_into_an_actor() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<AacTranscoder>();
    }

    #[test]
    fn aac_input_is_refused() {
        let result = AacTranscoder::new(DeviceAudioCodec::Aac);
        assert!(matches!(
            result,
            Err(TranscodeError::AlreadyAac(DeviceAudioCodec::Aac))
        ));
    }

    /// Prints the CPU time of a minute of G.711A (run with --release -- --nocapture for a
    /// meaningful figure); asserts only the frame count.
    #[test]
    fn a_minute_of_g711a_transcodes() {
        let tone = alaw_tone(1000, 3);
        let minute: Vec<u8> = tone.iter().copied().cycle().take(60 * 8000).collect();
        let started = std::time::Instant::now();
        let (_, tags) = transcode_as_device_frames(&minute);
        let elapsed = started.elapsed();
        println!("60 s of G.711A to AAC: {elapsed:?}");
        // 60 s at 16 kHz is 937 whole AAC frames, plus the sequence header.
        assert_eq!(tags.len(), 938);
    }
}
