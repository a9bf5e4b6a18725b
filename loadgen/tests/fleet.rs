//! The fleet runner end to end against a small two-protocol platform written with iothub's
//! codecs: a GT06 port that acknowledges logins, heartbeats and alarms, and a JT/T 808 port
//! that registers terminals (one code per IMEI, the newest registration wins), checks the
//! code at authentication and answers reports with 0x8001. Both ports close the older
//! connection when an IMEI logs in again, like the hub ("newest connection wins"), so the
//! duplicate-IMEI accounting can be checked without the hub.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iothub::codec::jt808::{
    self, encode, encode_general_response, phone_to_imei, Header, LiveControl, Message,
    RegisterResponse,
};
use iothub::codec::{gt06, CrcPolicy};
use iothub::imei::Imei;
use iothub_loadgen::fleet::{self, FleetConfig, Verifiers};
use iothub_loadgen::jt808_terminal::{Jt808Version, SimTerminal, SimTerminalConfig};
use iothub_loadgen::media::{LiveMedia, LiveStream};
use iothub_loadgen::roster::Family;
use iothub_loadgen::Kind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// 0x9101 live video for phone 4f0ebc392d30 (IMEI 869247060001762), platform serial 3:
/// 123.123.123.123 TCP 772 UDP 16582, channel 12, video only, main stream.
const LIVE_REQUEST: &str =
    "7e910100174f0ebc392d3000030f3132332e3132332e3132332e313233030440c60c0100f07e";
/// 0x9102 for the same phone, platform serial 4: channel 12, close, audio+video, main.
const LIVE_CLOSE: &str = "7e910200044f0ebc392d3000040c000000467e";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

/// Who holds each IMEI, and what the platform saw.
#[derive(Default)]
struct State {
    /// IMEI -> (connection id, how to close it).
    holders: HashMap<String, (u64, Arc<Notify>)>,
    next_connection: u64,
    /// Newest auth code per IMEI.
    codes: HashMap<String, String>,
    /// IMEIs seen in JT/T 808 headers.
    jt808_imeis: BTreeSet<String>,
    /// Alarm words of the 0x0200 reports.
    alarm_words: Vec<u32>,
    gt06_logins: u64,
}

#[derive(Clone, Default)]
struct Options {
    /// Frames written to a JT/T 808 terminal right after its authentication is accepted.
    after_auth: Vec<Vec<u8>>,
}

struct Platform {
    gt06: SocketAddr,
    jt808: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Platform {
    async fn start(options: Options) -> Platform {
        let state = Arc::new(Mutex::new(State::default()));
        let gt06 = listen(state.clone(), options.clone(), false).await;
        let jt808 = listen(state.clone(), options, true).await;
        Platform { gt06, jt808, state }
    }

    fn with<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

async fn listen(state: Arc<Mutex<State>>, options: Options, jt808: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let id = {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                s.next_connection += 1;
                s.next_connection
            };
            tokio::spawn(serve(stream, id, jt808, state.clone(), options.clone()));
        }
    });
    addr
}

/// Registers `imei` as held by connection `id`, closing the previous holder.
fn take_over(state: &Mutex<State>, imei: &str, id: u64, kick: &Arc<Notify>) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((old, old_kick)) = s.holders.insert(imei.to_owned(), (id, kick.clone())) {
        if old != id {
            old_kick.notify_one();
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    id: u64,
    jt808: bool,
    state: Arc<Mutex<State>>,
    options: Options,
) {
    let kick = Arc::new(Notify::new());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    loop {
        let n = tokio::select! {
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Newest connection wins: dropping the stream closes it.
            _ = kick.notified() => return,
        };
        buf.extend_from_slice(&chunk[..n]);
        let reply = if jt808 {
            jt808_replies(&mut buf, id, &state, &kick, &options)
        } else {
            gt06_replies(&mut buf, id, &state, &kick)
        };
        if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
            return;
        }
    }
}

fn gt06_replies(buf: &mut Vec<u8>, id: u64, state: &Mutex<State>, kick: &Arc<Notify>) -> Vec<u8> {
    let mut reply = Vec::new();
    while let Ok(Some(decoded)) = gt06::decode(buf, CrcPolicy::Reject) {
        buf.drain(..decoded.consumed);
        let frame = decoded.frame;
        let serial = frame.serial.unwrap_or(0);
        match (&frame.message, frame.protocol) {
            (gt06::Message::Login(login), _) => {
                take_over(state, login.imei.as_str(), id, kick);
                state.lock().unwrap_or_else(|p| p.into_inner()).gt06_logins += 1;
                reply.extend(gt06::encode_ack(0x01, serial));
            }
            (_, 0x13) => reply.extend(gt06::encode_ack(0x13, serial)),
            (_, 0x26) => reply.extend(gt06::encode_ack(0x26, serial)),
            _ => {}
        }
    }
    reply
}

fn jt808_replies(
    buf: &mut Vec<u8>,
    id: u64,
    state: &Mutex<State>,
    kick: &Arc<Notify>,
    options: &Options,
) -> Vec<u8> {
    let mut reply = Vec::new();
    while let Ok(Some(decoded)) = jt808::decode(buf, CrcPolicy::Reject) {
        buf.drain(..decoded.consumed);
        let header = decoded.packet.header;
        let Some(imei) = phone_to_imei(&header.phone.digits(), true).map(|i| i.to_string()) else {
            continue;
        };
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        s.jt808_imeis.insert(imei.clone());
        match decoded.packet.message {
            Message::Register(_) => {
                let code = format!("C{id}");
                s.codes.insert(imei, code.clone());
                let response = Message::RegisterResponse(RegisterResponse {
                    reply_serial: header.serial,
                    result: 0,
                    auth_code: Some(code),
                });
                reply.extend(
                    encode(&Header::reply_to(&header, 0x8100, 0), &response)
                        .unwrap_or_else(|e| panic!("0x8100: {e}")),
                );
            }
            Message::Auth(auth) => {
                let accepted = s.codes.get(&imei) == Some(&auth.auth_code);
                drop(s);
                if accepted {
                    take_over(state, &imei, id, kick);
                }
                reply.extend(encode_general_response(
                    &header,
                    0,
                    if accepted { 0 } else { 1 },
                ));
                if accepted {
                    for frame in &options.after_auth {
                        reply.extend_from_slice(frame);
                    }
                }
            }
            Message::Location(location) => {
                s.alarm_words.push(location.basic.alarm.0);
                reply.extend(encode_general_response(&header, 0, 0));
            }
            Message::Heartbeat => reply.extend(encode_general_response(&header, 0, 0)),
            _ => {}
        }
    }
    reply
}

fn fleet_config(platform: &Platform, trackers: u32, dvrs: u32) -> FleetConfig {
    let mut c = FleetConfig::new(platform.gt06, trackers);
    c.dvrs = dvrs;
    c.dvr_target = platform.jt808;
    c.duration = Duration::from_millis(1500);
    c.gps_interval = Duration::from_millis(200);
    c.heartbeat_interval = Duration::from_millis(300);
    c.dvr_location_interval = Duration::from_millis(200);
    c.dvr_heartbeat_interval = Duration::from_millis(300);
    c.ack_timeout = Duration::from_secs(2);
    c.connect_rate = 100.0;
    c.drain_timeout = Duration::ZERO;
    c.progress = false;
    c
}

#[tokio::test]
async fn dvrs_log_in_with_luhn_imeis_and_report() {
    let platform = Platform::start(Options::default()).await;
    let config = fleet_config(&platform, 0, 3);
    let report = fleet::run(config, Verifiers::none())
        .await
        .unwrap_or_else(|e| panic!("fleet: {e:#}"));
    let imeis = platform.with(|s| s.jt808_imeis.clone());
    // 86510000000000 + 0, 1, 2, each with its Luhn digit.
    assert_eq!(
        imeis.into_iter().collect::<Vec<_>>(),
        vec!["865100000000002", "865100000000010", "865100000000028"]
    );
    let dvrs = report
        .group(Family::Jt808, false)
        .unwrap_or_else(|| panic!("no jt808 group: {report:?}"));
    assert_eq!(dvrs.devices, 3);
    assert_eq!(dvrs.counters.acked(Kind::Login), 3);
    assert!(dvrs.counters.sent(Kind::Gps) >= 9, "{:?}", dvrs.counters);
    assert_eq!(dvrs.counters.errors, 0, "{:?}", report.error_samples);
    assert!(report.group(Family::Gt06, false).is_none());
}

#[tokio::test]
async fn dvr_alarm_reports_carry_the_alarm_word() {
    let platform = Platform::start(Options::default()).await;
    let mut config = fleet_config(&platform, 0, 2);
    config.dvr_location_interval = Duration::ZERO;
    config.dvr_heartbeat_interval = Duration::ZERO;
    config.dvr_alarm_interval = Duration::from_millis(250);
    config.dvr_alarm_word = 1;
    let report = fleet::run(config, Verifiers::none())
        .await
        .unwrap_or_else(|e| panic!("fleet: {e:#}"));
    let dvrs = report
        .group(Family::Jt808, false)
        .unwrap_or_else(|| panic!("no jt808 group"));
    let words = platform.with(|s| s.alarm_words.clone());
    assert!(dvrs.counters.sent(Kind::Alarm) >= 4, "{:?}", dvrs.counters);
    assert_eq!(words.len() as u64, dvrs.counters.sent(Kind::Alarm));
    assert!(words.iter().all(|w| *w == 1), "{words:?}");
    assert_eq!(dvrs.counters.sent(Kind::Gps), 0);
}

#[tokio::test]
async fn a_mixed_fleet_reports_each_family_apart() {
    let platform = Platform::start(Options::default()).await;
    let config = fleet_config(&platform, 4, 2);
    let report = fleet::run(config, Verifiers::none())
        .await
        .unwrap_or_else(|e| panic!("fleet: {e:#}"));
    let trackers = report.group(Family::Gt06, false).map(|g| g.devices);
    let dvrs = report.group(Family::Jt808, false).map(|g| g.devices);
    assert_eq!(trackers, Some(4));
    assert_eq!(dvrs, Some(2));
    assert_eq!(report.counters.acked(Kind::Login), 6);
    assert_eq!(platform.with(|s| s.gt06_logins), 4);
}

#[tokio::test]
async fn duplicate_imeis_are_counted_as_takeovers_not_errors() {
    let platform = Platform::start(Options::default()).await;
    let mut config = fleet_config(&platform, 2, 2);
    config.duplicate_imeis = 4;
    config.duration = Duration::from_millis(2500);
    config.reconnect_delay = Duration::from_millis(100);
    config.reconnect_jitter = Duration::from_millis(100);
    let report = fleet::run(config, Verifiers::none())
        .await
        .unwrap_or_else(|e| panic!("fleet: {e:#}"));
    // Every device shares its IMEI: only the shared groups exist.
    assert!(report.group(Family::Gt06, false).is_none());
    let trackers = report
        .group(Family::Gt06, true)
        .unwrap_or_else(|| panic!("no shared gt06 group: {report:?}"));
    let dvrs = report
        .group(Family::Jt808, true)
        .unwrap_or_else(|| panic!("no shared jt808 group: {report:?}"));
    assert_eq!(trackers.devices, 4);
    assert_eq!(dvrs.devices, 4);
    // Each pair takes the connection back and forth until the end.
    assert!(trackers.counters.takeovers >= 4, "{:?}", trackers.counters);
    assert!(dvrs.counters.takeovers >= 4, "{:?}", dvrs.counters);
    assert_eq!(report.counters.disconnects, 0, "{:?}", report.error_samples);
    assert_eq!(report.counters.errors, 0, "{:?}", report.error_samples);
    assert!(
        report.error_samples.is_empty(),
        "{:?}",
        report.error_samples
    );
}

#[derive(Debug, Default)]
struct RecordingMedia {
    started: Mutex<Vec<LiveStream>>,
    controls: Mutex<Vec<(Imei, LiveControl)>>,
}

impl LiveMedia for RecordingMedia {
    fn start(&self, stream: LiveStream) {
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(stream);
    }

    fn control(&self, imei: Imei, control: LiveControl) {
        self.controls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((imei, control));
    }
}

#[tokio::test]
async fn accepted_live_requests_reach_the_media_seam() {
    let platform = Platform::start(Options {
        after_auth: vec![hex(LIVE_REQUEST), hex(LIVE_CLOSE)],
    })
    .await;
    let media = Arc::new(RecordingMedia::default());
    let imei = Imei::parse("869247060001762").unwrap_or_else(|e| panic!("{e}"));
    let mut config = SimTerminalConfig::new(imei, Jt808Version::V2013);
    config.live_media = Some(media.clone());
    let mut terminal = SimTerminal::connect_and_login(platform.jt808, config)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let close = terminal
        .next_downlink_of(0x9102, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(close.is_some(), "0x9102 not received");
    let started = media
        .started
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].imei, imei);
    assert_eq!(started[0].phone.digits(), "4f0ebc392d30");
    assert_eq!(started[0].request.server, "123.123.123.123");
    assert_eq!(started[0].request.tcp_port, 772);
    assert_eq!(started[0].request.channel, 12);
    let controls = media
        .controls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert_eq!(controls.len(), 1);
    assert_eq!(controls[0].1.channel, 12);
    assert_eq!(controls[0].1.command, 0);
    terminal.close().await;
}

#[tokio::test]
async fn without_a_media_seam_the_live_request_is_only_answered() {
    let platform = Platform::start(Options {
        after_auth: vec![hex(LIVE_REQUEST)],
    })
    .await;
    let imei = Imei::parse("869247060001762").unwrap_or_else(|e| panic!("{e}"));
    let config = SimTerminalConfig::new(imei, Jt808Version::V2013);
    let mut terminal = SimTerminal::connect_and_login(platform.jt808, config)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    let request = terminal
        .next_downlink_of(0x9101, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(request.is_some(), "0x9101 not received");
    assert_eq!(
        terminal
            .counters()
            .commands_answered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    terminal.close().await;
}

/// A platform command for the terminal of [`LIVE_REQUEST`] (phone 4f0ebc392d30).
fn command(msg_id: u16, serial: u16, message: &Message) -> Vec<u8> {
    let phone = jt808::Phone::from_bytes(&hex("4f0ebc392d30"))
        .unwrap_or_else(|| panic!("phone 4f0ebc392d30"));
    let header = Header {
        msg_id,
        version: None,
        phone,
        serial,
        package: None,
        version_flag_mismatch: false,
    };
    encode(&header, message).unwrap_or_else(|e| panic!("encode {msg_id:#06x}: {e}"))
}

/// Reads from a media connection until `want` bytes arrived.
async fn media_bytes(listener: &TcpListener, want: usize) -> Vec<u8> {
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(5), listener.accept())
        .await
        .unwrap_or_else(|_| panic!("no media connection"))
        .unwrap_or_else(|e| panic!("accept: {e}"));
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    while data.len() < want {
        let n = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no media bytes"))
            .unwrap_or_else(|e| panic!("read: {e}"));
        assert!(n > 0, "media connection closed after {} bytes", data.len());
        data.extend_from_slice(&buf[..n]);
    }
    data
}

// SPS and PPS bytes of a 352x288 baseline stream, then an IDR slice and a P slice whose
// first_mb_in_slice is 0 (first bit 1): two access units.
const ANNEX_B: &str = "000000016742c01e8c8d40b04b4d4040404200000001684ace3c80\
                       000000016588840021ff\
                       00000001419a6c41ff";

#[tokio::test]
async fn a_streaming_dvr_sends_jt1078_packets_for_live_and_playback_requests() {
    use iothub::codec::jt808::{BcdTime, LiveRequest, PlaybackControl, PlaybackRequest};
    use iothub::media::jt1078::Layout;
    use iothub_loadgen::dvr_stream::{DvrMedia, DvrMediaConfig, MediaSource, StreamKind};

    let live = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let playback = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = |l: &TcpListener| l.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let live_request = Message::LiveRequest(LiveRequest {
        server: "127.0.0.1".to_owned(),
        tcp_port: port(&live),
        udp_port: 0,
        channel: 1,
        data_type: 1,
        stream: 0,
    });
    let playback_request = Message::PlaybackRequest(PlaybackRequest {
        server: "127.0.0.1".to_owned(),
        tcp_port: port(&playback),
        udp_port: 0,
        channel: 2,
        av_type: 2,
        stream: 1,
        storage: 0,
        mode: 0,
        speed: 1,
        start: BcdTime([0x26, 0x12, 0x07, 0x10, 0x00, 0x00]),
        end: BcdTime([0x26, 0x12, 0x07, 0x10, 0x05, 0x00]),
    });
    let platform = Platform::start(Options {
        after_auth: vec![
            command(0x9101, 3, &live_request),
            command(0x9201, 4, &playback_request),
        ],
    })
    .await;
    let source = MediaSource::from_bytes(&hex(&ANNEX_B.replace(' ', "")), None, false)
        .unwrap_or_else(|e| panic!("source: {e}"));
    assert_eq!(source.video.len(), 2);
    let mut media_config = DvrMediaConfig::new(Layout::Sim6);
    media_config.fps = 50.0;
    media_config.duration = Duration::from_secs(10);
    let media = DvrMedia::new(media_config, Arc::new(source)).unwrap_or_else(|e| panic!("{e}"));
    let imei = Imei::parse("869247060001762").unwrap_or_else(|e| panic!("{e}"));
    let mut config = SimTerminalConfig::new(imei, Jt808Version::V2013);
    config.live_media = Some(Arc::new(media.clone()));
    let mut terminal = SimTerminal::connect_and_login(platform.jt808, config)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    // Reading the platform's commands is what answers them and starts the streams.
    let request = terminal
        .next_downlink_of(0x9201, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(request.is_some(), "0x9201 not received");

    let live_bytes = media_bytes(&live, 200).await;
    let playback_bytes = media_bytes(&playback, 200).await;
    // 01cd, V/P/X/CC, M/PT, sequence, SIM (6 bytes), logical channel.
    assert_eq!(&live_bytes[..4], b"01cd");
    assert_eq!(&live_bytes[8..14], &hex("4f0ebc392d30")[..]);
    assert_eq!(live_bytes[14], 1);
    assert_eq!(&playback_bytes[..4], b"01cd");
    assert_eq!(playback_bytes[14], 2);

    media.playback_control(
        imei,
        PlaybackControl {
            channel: 2,
            control: 2,
            speed: 0,
            position: BcdTime([0; 6]),
        },
    );
    media.control(
        imei,
        LiveControl {
            channel: 1,
            command: 0,
            close_kind: 0,
            stream: 0,
        },
    );
    for _ in 0..200 {
        if media.streaming() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = media.report();
    assert_eq!(report.streaming, 0, "{report:?}");
    let mut kinds: Vec<StreamKind> = report.streams.iter().map(|s| s.kind).collect();
    kinds.sort_by_key(|k| *k == StreamKind::Playback);
    assert_eq!(kinds, vec![StreamKind::Live, StreamKind::Playback]);
    terminal.close().await;
}
