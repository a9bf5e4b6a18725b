//! The seam where JT/T 1078 audio/video streaming plugs into a simulated dashcam.
//!
//! A real dashcam that accepts a 0x9101 real-time request opens a connection to the media
//! server the request names (`server`, TCP `tcp_port` or UDP `udp_port`) and streams the
//! requested channel as JT/T 1078 RTP packets (§5.5: SIM number, logical channel, data type,
//! subpackage marks, timestamps) until a 0x9102 closes it. The simulated terminal
//! ([`crate::jt808_terminal::SimTerminal`]) answers both messages as firmware does, but it
//! does not stream: real video comes with iothub's media server, and a simulator that
//! streamed something else would only measure itself.
//!
//! Streaming plugs in here. A [`LiveMedia`] set in
//! [`SimTerminalConfig::live_media`](crate::jt808_terminal::SimTerminalConfig::live_media)
//! is told about every 0x9101, 0x9102, 0x9201 and 0x9202 the terminal accepted, right after
//! its answer went out, which is the moment firmware dials the media server. Without one
//! (the default) the terminal answers and nothing streams. [`crate::dvr_stream::DvrMedia`]
//! streams a video file (and optionally an audio file) the way a dashcam does.

use std::fmt;

use iothub::codec::jt808::{LiveControl, LiveRequest, Phone, PlaybackControl, PlaybackRequest};
use iothub::imei::Imei;

/// A live stream the platform asked a terminal for (its 0x9101, accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveStream {
    pub imei: Imei,
    /// The terminal's header phone: the SIM number its JT/T 1078 RTP packets carry.
    pub phone: Phone,
    /// Where to stream and what: server, ports, logical channel, data type, main/sub stream.
    pub request: LiveRequest,
}

/// A recording the platform asked a terminal to play back (its 0x9201, accepted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackStream {
    pub imei: Imei,
    /// The terminal's header phone: the SIM number its JT/T 1078 RTP packets carry.
    pub phone: Phone,
    /// Where to stream and what: server, ports, channel, media type, time range, speed.
    pub request: PlaybackRequest,
}

/// Streams a simulated terminal's audio/video once the platform asks for it.
///
/// Called from the terminal's own task while it handles the platform's message, so an
/// implementation must return at once and do its I/O on tasks of its own; it also owns the
/// bounds of what it streams (bit rate, duration), so that a run stays bounded.
pub trait LiveMedia: fmt::Debug + Send + Sync {
    /// The terminal accepted a 0x9101: start streaming `stream.request.channel`.
    fn start(&self, stream: LiveStream);

    /// The terminal accepted a 0x9102 for `control.channel` (close, switch stream, pause,
    /// resume, close talk).
    fn control(&self, imei: Imei, control: LiveControl);

    /// The terminal accepted a 0x9201: play back `stream.request.channel`. By default
    /// nothing streams.
    fn playback(&self, stream: PlaybackStream) {
        let _ = stream;
    }

    /// The terminal accepted a 0x9202 for `control.channel` (start, pause, stop, ...).
    fn playback_control(&self, imei: Imei, control: PlaybackControl) {
        let _ = (imei, control);
    }
}
