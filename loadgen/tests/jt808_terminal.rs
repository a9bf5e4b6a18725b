//! The simulated JT/T 808 terminal against a small platform written with iothub's codec:
//! the platform answers 0x0100 with 0x8100 and 0x0102/0x0002/0x0003/0x0200/0x0704/0x1206
//! with 0x8001, writes hand-made downlink frames (0x8104, 0x8300, 0x9101...) after a
//! successful authentication, and logs every packet it decodes with its wire bytes.
//!
//! The terminal in these tests has IMEI 869247060001762, whose `newImeiRule` phone is
//! `4f0ebc392d30`; every hex frame below carries that phone.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use iothub::codec::jt808::{
    decode, encode, encode_general_response, phone_to_imei, AlarmFlags, BcdTime, Header,
    LocationItem, Message, Packet, Param, ParamValue, RegisterLayout, RegisterResponse, Text,
};
use iothub::codec::CrcPolicy;
use iothub::imei::Imei;
use iothub_loadgen::jt808_terminal::{
    AdasEvent, BatchKind, Jt808Version, SimTerminal, SimTerminalConfig, TerminalError,
};
use iothub_loadgen::{Fix, Kind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const IMEI: &str = "869247060001762";
const AUTH_CODE: &str = "AC-4f0ebc";

/// 0x0100 2013 from the default config, serial 0: province 44, city 300, maker "SIMTR",
/// model "SIM-DVR-4G", terminal id "0001762", blue plate "粤B12345" (GBK d4c1...).
const REGISTER_2013: &str = "7e0100002d4f0ebc392d300000002c012c53494d545253494d2d4456522d34470000000000000000000030303031373632\
01d4c1423132333435947e";
/// 0x0102 2013, serial 1: the auth code as the whole body.
const AUTH_2013: &str = "7e010200094f0ebc392d30000141432d346630656263fb7e";
/// 0x0102 2019, serial 1: version 1, 10-byte phone, code length 9, code, IMEI, "1.0.0".
const AUTH_2019: &str =
    "7e0102402d01000000004f0ebc392d3000010941432d346630656263383639323437303630303031373632\
312e302e30000000000000000000000000000000947e";
/// 0x0200, serial 2: alarm 3 (emergency + overspeed), status 0x000c000b (ACC, positioned,
/// west, GPS + BeiDou), 22.576539 / -113.942885 (the latitude holds an escaped 7d), 36.0
/// km/h, course 90, 2025-03-01 16:00:00 GMT+8; items 0x01 123456, 0x30 25, 0x31 11, then
/// the extra 0x02 500 and 0xe1 0102.
const LOCATION: &str =
    "7e020000304f0ebc392d30000200000003000c000b01587d019b06caa16500000168005a250301160000\
01040001e24030011931010b020201f4e1020102f87e";
/// 0x8104 query all parameters, platform serial 1.
const QUERY_ALL_PARAMS: &str = "7e810400004f0ebc392d3000015d7e";
/// 0x8300 text, platform serial 2: flag 0x08 (TTS), "请减速" in GBK.
const TEXT: &str = "7e830000074f0ebc392d30000208c7ebbcf5cbd9207e";
/// 0x8103 set parameters, platform serial 1: 0x0001 heartbeat interval = 60 s.
const SET_HEARTBEAT_60: &str = "7e8103000a4f0ebc392d3000010100000001040000003c687e";
/// 0x8104 query all parameters, platform serial 2.
const QUERY_ALL_PARAMS_2: &str = "7e810400004f0ebc392d3000025e7e";
/// 0x9101 live video, platform serial 3: 123.123.123.123 TCP 772 UDP 16582, channel 12,
/// video only, main stream.
const LIVE_REQUEST: &str =
    "7e910100174f0ebc392d3000030f3132332e3132332e3132332e313233030440c60c0100f07e";
/// 0x8201 position query, platform serial 4.
const LOCATION_QUERY: &str = "7e820100004f0ebc392d3000045e7e";
/// 0x8300 text in two packages, platform serials 5 and 6: flag 0x08, "前方路口右转后直行".
const TEXT_PART_1: &str = "7e830020074f0ebc392d3000050002000108c7b0b7bdc2b77b7e";
const TEXT_PART_2: &str = "7e8300200c4f0ebc392d30000600020002bfdad3d2d7aabaf3d6b1d0d0477e";

/// 0x9205 resource query, platform serial 7: channel 1, 2025-03-01 16:00:00 to 16:10:00,
/// no alarm filter, audio+video, main stream, main storage.
const RESOURCE_QUERY: &str =
    "7e920500184f0ebc392d300007012503011600002503011610000000000000000000000101407e";
/// 0x9206 file upload, platform serial 8: FTP 10.0.0.9:21, user "user", password "pass",
/// path "/up", channel 1, the same span, any network (conditions 7).
const FILE_UPLOAD: &str =
    "7e920600324f0ebc392d3000080831302e302e302e39001504757365720470617373032f757001\
250301160000250301161000000000000000000000010107437e";
/// 0x8107 query attributes, platform serial 9.
const QUERY_ATTRIBUTES: &str = "7e810700004f0ebc392d300009567e";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or_else(|e| panic!("{s}: {e}")))
        .collect()
}

#[derive(Clone, Default)]
struct PlatformOptions {
    /// 0x8001 result for 0x0102.
    auth_result: u8,
    /// Frames written right after answering a 0x0102 with result 0.
    after_auth: Vec<Vec<u8>>,
    /// Do not answer heartbeats.
    ignore_heartbeats: bool,
}

/// One packet the platform decoded, with the bytes it came in.
#[derive(Debug, Clone)]
struct Received {
    packet: Packet,
    raw: Vec<u8>,
}

struct Platform {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Platform {
    async fn start(options: PlatformOptions) -> Platform {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, options.clone(), log.clone()));
            }
        });
        Platform { addr, received }
    }

    fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn of(&self, msg_id: u16) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.packet.header.msg_id == msg_id)
            .collect()
    }

    /// The first `n` packets with `msg_id`, waiting up to two seconds for them.
    async fn wait_for(&self, msg_id: u16, n: usize) -> Vec<Received> {
        for _ in 0..200 {
            if self.of(msg_id).len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all = self.of(msg_id);
        assert!(
            all.len() >= n,
            "{n} x 0x{msg_id:04x}: {:?}",
            self.received()
        );
        all
    }
}

async fn serve(mut stream: TcpStream, options: PlatformOptions, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Ok(Some(decoded)) = decode(&buf, CrcPolicy::Reject) {
            let raw = buf[decoded.skipped..decoded.consumed].to_vec();
            buf.drain(..decoded.consumed);
            let header = decoded.packet.header;
            log.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Received {
                    packet: decoded.packet,
                    raw,
                });
            let mut reply = Vec::new();
            match header.msg_id {
                0x0100 => {
                    let response = Message::RegisterResponse(RegisterResponse {
                        reply_serial: header.serial,
                        result: 0,
                        auth_code: Some(AUTH_CODE.to_owned()),
                    });
                    reply.extend(
                        encode(&Header::reply_to(&header, 0x8100, 0), &response)
                            .unwrap_or_else(|e| panic!("0x8100: {e}")),
                    );
                }
                0x0102 => {
                    reply.extend(encode_general_response(&header, 0, options.auth_result));
                    if options.auth_result == 0 {
                        for frame in &options.after_auth {
                            reply.extend_from_slice(frame);
                        }
                    }
                }
                0x0002 if options.ignore_heartbeats => {}
                0x0002 | 0x0003 | 0x0200 | 0x0704 | 0x1206 => {
                    reply.extend(encode_general_response(&header, 0, 0));
                }
                _ => {}
            }
            if !reply.is_empty() && stream.write_all(&reply).await.is_err() {
                return;
            }
        }
    }
}

fn config(version: Jt808Version) -> SimTerminalConfig {
    let imei = Imei::parse(IMEI).unwrap_or_else(|e| panic!("{e}"));
    let mut c = SimTerminalConfig::new(imei, version);
    c.ack_timeout = Duration::from_secs(2);
    c
}

async fn logged_in(platform: &Platform, config: SimTerminalConfig) -> SimTerminal {
    SimTerminal::connect_and_login(platform.addr, config)
        .await
        .unwrap_or_else(|e| panic!("login: {e}"))
}

fn fix_at(hour: u32, second: u32) -> Fix {
    let time = Utc
        .with_ymd_and_hms(2025, 3, 1, hour, 0, second)
        .single()
        .unwrap_or_default();
    Fix {
        speed_kmh: 36,
        course: 90,
        satellites: 11,
        odometer_m: 12_345_600,
        ..Fix::at(time, 22.576539, -113.942885)
    }
}

fn location_of(received: &Received) -> iothub::codec::jt808::Location {
    match &received.packet.message {
        Message::Location(l) => l.clone(),
        other => panic!("not a location: {other:?}"),
    }
}

#[tokio::test]
async fn registration_and_authentication_2013() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    assert!(terminal.is_authenticated());
    assert_eq!(terminal.auth_code(), Some(AUTH_CODE));
    let register = platform.wait_for(0x0100, 1).await;
    assert_eq!(register[0].raw, hex(REGISTER_2013));
    let auth = platform.wait_for(0x0102, 1).await;
    assert_eq!(auth[0].raw, hex(AUTH_2013));
    assert_eq!(
        phone_to_imei(&auth[0].packet.header.phone.digits(), true).map(|i| i.to_string()),
        Some(IMEI.to_owned())
    );
    assert_eq!(terminal.counters().acked(Kind::Login), 1);
}

#[tokio::test]
async fn registration_and_authentication_2019() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let terminal = logged_in(&platform, config(Jt808Version::V2019)).await;
    assert!(terminal.is_authenticated());
    let register = platform.wait_for(0x0100, 1).await;
    assert_eq!(register[0].packet.header.version, Some(1));
    let Message::Register(body) = &register[0].packet.message else {
        panic!("not a register: {:?}", register[0]);
    };
    assert_eq!(body.layout, RegisterLayout::V2019);
    assert_eq!(body.terminal_id, "0001762");
    assert_eq!(body.plate, "粤B12345");
    let auth = platform.wait_for(0x0102, 1).await;
    assert_eq!(auth[0].raw, hex(AUTH_2019));
    assert_eq!(
        phone_to_imei(&auth[0].packet.header.phone.digits(), true).map(|i| i.to_string()),
        Some(IMEI.to_owned())
    );
}

#[tokio::test]
async fn known_auth_code_skips_registration() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut c = config(Jt808Version::V2013);
    c.auth_code = Some(AUTH_CODE.to_owned());
    let terminal = logged_in(&platform, c).await;
    assert!(terminal.is_authenticated());
    let auth = platform.wait_for(0x0102, 1).await;
    assert_eq!(auth[0].packet.header.serial, 0);
    assert!(platform.of(0x0100).is_empty());
}

#[tokio::test]
async fn refused_authentication_is_an_error() {
    let platform = Platform::start(PlatformOptions {
        auth_result: 1,
        ..PlatformOptions::default()
    })
    .await;
    let result = SimTerminal::connect_and_login(platform.addr, config(Jt808Version::V2013)).await;
    assert!(
        matches!(
            result,
            Err(TerminalError::Rejected {
                msg_id: 0x0102,
                serial: 1,
                result: 1
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn location_report_carries_fix_alarm_and_items() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let extra = [
        LocationItem::Fuel(500),
        LocationItem::Raw {
            id: 0xE1,
            value: vec![1, 2],
        },
    ];
    let alarm = AlarmFlags::EMERGENCY | AlarmFlags::OVERSPEED;
    let serial = terminal
        .send_location(&fix_at(8, 0), alarm, &extra)
        .await
        .unwrap_or_else(|e| panic!("location: {e}"));
    assert_eq!(serial, 2);
    let reports = platform.wait_for(0x0200, 1).await;
    assert_eq!(reports[0].raw, hex(LOCATION));
    let location = location_of(&reports[0]);
    assert!((location.basic.latitude() - 22.576539).abs() < 1e-9);
    assert!((location.basic.longitude() + 113.942885).abs() < 1e-9);
    assert_eq!(location.basic.speed_kmh(), 36.0);
    assert_eq!(location.basic.course, 90);
    assert_eq!(
        location.basic.time.to_utc(),
        Utc.with_ymd_and_hms(2025, 3, 1, 8, 0, 0).single()
    );
    assert_eq!(location.basic.alarm, AlarmFlags(alarm));
    assert_eq!(location.item(0x01), Some(&LocationItem::Mileage(123_456)));
    assert_eq!(location.item(0x30), Some(&LocationItem::Signal(25)));
    assert_eq!(location.item(0x31), Some(&LocationItem::Satellites(11)));
    assert_eq!(location.item(0x02), Some(&LocationItem::Fuel(500)));
    assert_eq!(location.item(0xE1), Some(&extra[1]));
    assert_eq!(terminal.counters().acked(Kind::Gps), 1);
}

#[tokio::test]
async fn extra_item_replaces_the_standard_one() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2019)).await;
    terminal
        .send_location(&fix_at(8, 0), 0, &[LocationItem::Signal(31)])
        .await
        .unwrap_or_else(|e| panic!("location: {e}"));
    let location = location_of(&platform.wait_for(0x0200, 1).await[0]);
    let signals: Vec<_> = location.items.iter().filter(|i| i.id() == 0x30).collect();
    assert_eq!(signals, vec![&LocationItem::Signal(31)]);
}

#[tokio::test]
async fn batch_carries_every_fix() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let fixes = [fix_at(8, 0), fix_at(8, 10), fix_at(8, 20)];
    terminal
        .send_batch(&fixes, BatchKind::BlindArea)
        .await
        .unwrap_or_else(|e| panic!("batch: {e}"));
    let batches = platform.wait_for(0x0704, 1).await;
    let Message::BatchLocation(batch) = &batches[0].packet.message else {
        panic!("not a batch: {:?}", batches[0]);
    };
    assert_eq!(batch.kind, 1);
    assert_eq!(batch.items.len(), 3);
    assert_eq!(
        batch.items[2].basic.time,
        BcdTime([0x25, 0x03, 0x01, 0x16, 0x00, 0x20])
    );
    assert_eq!(
        batch.items[1].item(0x31),
        Some(&LocationItem::Satellites(11))
    );
}

#[tokio::test]
async fn empty_batch_is_refused_before_sending() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let result = terminal.send_batch(&[], BatchKind::Normal).await;
    assert!(
        matches!(result, Err(TerminalError::EmptyBatch)),
        "{result:?}"
    );
}

#[tokio::test]
async fn adas_alarm_carries_its_label() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let event = AdasEvent {
        attachments: 3,
        ..AdasEvent::new(4, 1)
    };
    let first = terminal
        .send_adas_alarm(&fix_at(8, 0), event)
        .await
        .unwrap_or_else(|e| panic!("adas: {e}"));
    let second = terminal
        .send_adas_alarm(&fix_at(8, 0), event)
        .await
        .unwrap_or_else(|e| panic!("adas: {e}"));
    assert_eq!(second.seq, 1, "second alarm of the same second");
    let reports = platform.wait_for(0x0200, 2).await;
    let Some(LocationItem::Adas(adas)) = location_of(&reports[0]).item(0x64).cloned() else {
        panic!("no 0x64 item: {:?}", reports[0]);
    };
    assert_eq!(adas.kind, 4);
    assert_eq!(adas.level, 1);
    assert_eq!(adas.alarm_id, 0);
    assert_eq!(adas.common.label, first);
    assert_eq!(adas.common.label.terminal_id_str(), "0001762");
    assert_eq!(
        adas.common.label.time,
        BcdTime([0x25, 0x03, 0x01, 0x16, 0x00, 0x00])
    );
    assert_eq!(adas.common.label.seq, 0);
    assert_eq!(adas.common.label.attachments, 3);
    assert_eq!(adas.common.latitude_e6, 22_576_539);
    assert_eq!(terminal.counters().acked(Kind::Alarm), 2);
}

#[tokio::test]
async fn query_all_params_is_answered_with_the_configured_set() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(QUERY_ALL_PARAMS)],
        ..PlatformOptions::default()
    })
    .await;
    let mut c = config(Jt808Version::V2013);
    c.params = vec![
        Param {
            id: 0x0001,
            value: ParamValue::Dword(30),
        },
        Param {
            id: 0x0013,
            value: ParamValue::Text("hub.example.com".to_owned()),
        },
        Param {
            id: 0x0018,
            value: ParamValue::Dword(7611),
        },
    ];
    let params = c.params.clone();
    let mut terminal = logged_in(&platform, c).await;
    let query = terminal
        .next_downlink_of(0x8104, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8104"));
    assert_eq!(query.raw, hex(QUERY_ALL_PARAMS));
    let replies = platform.wait_for(0x0104, 1).await;
    let Message::ParamsReply(reply) = &replies[0].packet.message else {
        panic!("not a 0x0104: {:?}", replies[0]);
    };
    assert_eq!(reply.reply_serial, 1);
    assert_eq!(reply.params, params);
}

#[tokio::test]
async fn set_params_shows_in_the_next_query() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(SET_HEARTBEAT_60), hex(QUERY_ALL_PARAMS_2)],
        ..PlatformOptions::default()
    })
    .await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    terminal
        .next_downlink_of(0x8104, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8104"));
    let acks = platform.wait_for(0x0001, 1).await;
    assert_eq!(
        acks[0].packet.message,
        Message::TerminalResponse(iothub::codec::jt808::GeneralResponse {
            reply_serial: 1,
            reply_id: 0x8103,
            result: 0,
        })
    );
    let replies = platform.wait_for(0x0104, 1).await;
    let Message::ParamsReply(reply) = &replies[0].packet.message else {
        panic!("not a 0x0104: {:?}", replies[0]);
    };
    assert_eq!(
        reply.params.iter().find(|p| p.id == 0x0001),
        Some(&Param {
            id: 0x0001,
            value: ParamValue::Dword(60)
        })
    );
    assert!(
        reply.params.iter().any(|p| p.id == 0x0018),
        "the dialled port is in the set: {:?}",
        reply.params
    );
}

#[tokio::test]
async fn text_is_answered_with_a_general_response() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(TEXT)],
        ..PlatformOptions::default()
    })
    .await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let text = terminal
        .next_downlink_of(0x8300, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8300"));
    assert_eq!(text.raw, hex(TEXT));
    assert_eq!(
        text.message,
        Message::Text(Text {
            flag: 0x08,
            text_type: None,
            text: "请减速".to_owned(),
        })
    );
    let acks = platform.wait_for(0x0001, 1).await;
    assert_eq!(
        acks[0].packet.message,
        Message::TerminalResponse(iothub::codec::jt808::GeneralResponse {
            reply_serial: 2,
            reply_id: 0x8300,
            result: 0,
        })
    );
    assert_eq!(terminal.counters().snapshot().commands_answered, 1);
}

#[tokio::test]
async fn live_request_and_position_query_get_their_answers() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(LIVE_REQUEST), hex(LOCATION_QUERY)],
        ..PlatformOptions::default()
    })
    .await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    terminal
        .next_downlink_of(0x8201, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8201"));
    let acks = platform.wait_for(0x0001, 1).await;
    assert_eq!(
        acks[0].packet.message,
        Message::TerminalResponse(iothub::codec::jt808::GeneralResponse {
            reply_serial: 3,
            reply_id: 0x9101,
            result: 0,
        })
    );
    let positions = platform.wait_for(0x0201, 1).await;
    let Message::LocationReply {
        reply_serial,
        location,
    } = &positions[0].packet.message
    else {
        panic!("not a 0x0201: {:?}", positions[0]);
    };
    assert_eq!(*reply_serial, 4);
    assert!(location.basic.status.positioned());
}

#[tokio::test]
async fn dashcam_queries_get_their_dedicated_answers() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(RESOURCE_QUERY), hex(FILE_UPLOAD), hex(QUERY_ATTRIBUTES)],
        ..PlatformOptions::default()
    })
    .await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    terminal
        .next_downlink_of(0x8107, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8107"));
    let lists = platform.wait_for(0x1205, 1).await;
    let Message::ResourceList(list) = &lists[0].packet.message else {
        panic!("not a 0x1205: {:?}", lists[0]);
    };
    assert_eq!(list.reply_serial, 7);
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].end,
        BcdTime([0x25, 0x03, 0x01, 0x16, 0x10, 0x00])
    );
    assert_eq!(list.items[0].size, 600 * 64_000);
    let acks = platform.wait_for(0x0001, 1).await;
    assert_eq!(
        acks[0].packet.message,
        Message::TerminalResponse(iothub::codec::jt808::GeneralResponse {
            reply_serial: 8,
            reply_id: 0x9206,
            result: 0,
        })
    );
    let uploads = platform.wait_for(0x1206, 1).await;
    assert_eq!(
        uploads[0].packet.message,
        Message::FileUploadResult {
            reply_serial: 8,
            result: 0
        }
    );
    let attributes = platform.wait_for(0x0107, 1).await;
    let Message::Attributes(a) = &attributes[0].packet.message else {
        panic!("not a 0x0107: {:?}", attributes[0]);
    };
    assert_eq!(a.terminal_id, "0001762");
    assert_eq!(a.iccid, "89860000000000000000");
}

#[tokio::test]
async fn subpackaged_text_is_reassembled_and_each_package_answered() {
    let platform = Platform::start(PlatformOptions {
        after_auth: vec![hex(TEXT_PART_1), hex(TEXT_PART_2)],
        ..PlatformOptions::default()
    })
    .await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2013)).await;
    let text = terminal
        .next_downlink_of(0x8300, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("downlink: {e}"))
        .unwrap_or_else(|| panic!("no 0x8300"));
    assert_eq!(text.raw, [hex(TEXT_PART_1), hex(TEXT_PART_2)].concat());
    assert_eq!(text.header.serial, 5);
    assert_eq!(
        text.message,
        Message::Text(Text {
            flag: 0x08,
            text_type: None,
            text: "前方路口右转后直行".to_owned(),
        })
    );
    let acks = platform.wait_for(0x0001, 2).await;
    let answered: Vec<_> = acks
        .iter()
        .filter_map(|a| match a.packet.message {
            Message::TerminalResponse(g) => Some(g.reply_serial),
            _ => None,
        })
        .collect();
    assert_eq!(answered, vec![5, 6]);
}

#[tokio::test]
async fn unanswered_heartbeat_times_out() {
    let platform = Platform::start(PlatformOptions {
        ignore_heartbeats: true,
        ..PlatformOptions::default()
    })
    .await;
    let mut c = config(Jt808Version::V2013);
    c.ack_timeout = Duration::from_millis(200);
    let mut terminal = logged_in(&platform, c).await;
    let result = terminal.send_heartbeat().await;
    assert!(
        matches!(
            result,
            Err(TerminalError::AckTimeout {
                msg_id: 0x0002,
                serial: 2,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(terminal.counters().snapshot().ack_timeouts, 1);
}

#[tokio::test]
async fn heartbeat_and_logout_are_answered() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut terminal = logged_in(&platform, config(Jt808Version::V2019)).await;
    terminal
        .send_heartbeat()
        .await
        .unwrap_or_else(|e| panic!("heartbeat: {e}"));
    terminal
        .send_logout()
        .await
        .unwrap_or_else(|e| panic!("logout: {e}"));
    assert!(!terminal.is_authenticated());
    assert_eq!(terminal.counters().acked(Kind::Heartbeat), 1);
    assert_eq!(terminal.counters().snapshot().online, 0);
    assert_eq!(
        platform.wait_for(0x0003, 1).await[0].packet.header.serial,
        3
    );
}

#[tokio::test]
async fn run_until_sends_periodic_reports_and_stops() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut c = config(Jt808Version::V2013);
    c.location_every = Duration::from_millis(100);
    c.heartbeat_every = Duration::from_millis(200);
    let mut terminal = logged_in(&platform, c).await;
    let started = tokio::time::Instant::now();
    terminal
        .run_until(started + Duration::from_millis(1050))
        .await
        .unwrap_or_else(|e| panic!("run: {e}"));
    assert!(started.elapsed() < Duration::from_secs(3));
    let counters = terminal.counters().snapshot();
    // First tick at a random offset within the period, then every period (fewer when the
    // machine is busy: ticks are delayed, never bunched up).
    assert!((5..=11).contains(&counters.sent(Kind::Gps)), "{counters:?}");
    assert!(
        (2..=6).contains(&counters.sent(Kind::Heartbeat)),
        "{counters:?}"
    );
    assert_eq!(
        counters.acked(Kind::Heartbeat),
        counters.sent(Kind::Heartbeat)
    );
    assert_eq!(counters.ack_timeouts, 0);
}

#[tokio::test]
async fn garbage_from_the_platform_is_an_error_not_a_panic() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(&[0x55; 2000]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut terminal = SimTerminal::connect(addr, config(Jt808Version::V2013))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let result = terminal.register().await;
    assert!(
        matches!(result, Err(TerminalError::Decode(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn imei_without_a_2013_phone_is_refused_before_connecting() {
    let platform = Platform::start(PlatformOptions::default()).await;
    let mut c = config(Jt808Version::V2013);
    c.new_imei_rule = false;
    let counters = c.counters.clone();
    let result = SimTerminal::connect(platform.addr, c).await;
    assert!(
        matches!(result, Err(TerminalError::NoPhone { .. })),
        "{result:?}"
    );
    assert_eq!(counters.snapshot().connects_attempted, 0);
}
