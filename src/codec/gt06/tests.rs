//! GT06 codec tests: conformance against the shared device vectors, framing edge cases,
//! golden reply bytes, and encode -> decode round trips.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::codec::CrcPolicy;
use crate::imei::Imei;

const VECTORS: &str = include_str!("../../../tests/vectors/gt06.jsonl");

fn bytes(hex_str: &str) -> Vec<u8> {
    hex::decode(hex_str).expect("test hex is valid")
}

fn decode_one(hex_str: &str, policy: CrcPolicy) -> Decoded {
    let buf = bytes(hex_str);
    decode(&buf, policy)
        .expect("frame decodes")
        .expect("frame is complete")
}

// ---------------------------------------------------------------------------------------
// Conformance: every record of tests/vectors/gt06.jsonl.
// ---------------------------------------------------------------------------------------

/// Where our decode deliberately differs from a record's `expect` / `derived` / `checks`,
/// keyed by (vector id, check name). The conformance test fails on any difference missing
/// here and on any entry here that no longer differs.
const ACCEPTED: &[(&str, &str, &str)] = &[
    ("gt06-traccar-dec-003", "power", "0xf1 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-005", "derived_gps_present", "0x61 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-008", "derived_gps_present", "0x38 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-008", "position", "0x38 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-012", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-013", "derived_gps_present", "0xa2 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-013", "position", "0xa2 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-018", "battery", "0x36 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-019", "derived_gps_present", "0xa2 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-019", "position", "0xa2 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-022", "derived_gps_present", "0x31 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-023", "derived_gps_present", "0x17 RFID variant (standard framing, CRC ok): vendor type kept raw"),
    ("gt06-traccar-dec-026", "alarm", "0x16 whose cell id is 4 bytes though its LBS length says 9: S1's layout reads the alarm byte one place early"),
    ("gt06-traccar-dec-028", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-039", "crc_ok", "ZhongXun 0x11 (length counts only the content): no serial, no CRC; `checks` looked for one"),
    ("gt06-traccar-dec-040", "alarm", "0xa5 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-041", "power", "0x13 OBD6 form (length 0x13): the hub reads the 5 standard heartbeat bytes, not OBD6's voltage field"),
    ("gt06-traccar-dec-045", "derived_gps_present", "0x24 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-045", "position", "0x24 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-047", "ignition", "0x12 with 5 vendor bytes after the cell (traccar reads ACC there): the hub keeps S1's 0x12 layout"),
    ("gt06-traccar-dec-070", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-071", "one_frame", "the peer's string stops after 0d (0a missing): the frame is incomplete, decode asks for more bytes"),
    ("gt06-traccar-dec-072", "alarm", "0x70 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-073", "position", "0x70 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-081", "derived_gps_present", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-081", "position", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-082", "info_subtype", "7878 0x94 with a bare voltage word: normalised to sub-type 0x00 (external voltage)"),
    ("gt06-traccar-dec-095", "derived_gps_present", "0xa3 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-114", "kind", "7979 0x32 with GPS length 0 (no fix): decoded as an LBS report of the serving cell"),
    ("gt06-traccar-dec-115", "kind", "7979 0x32 with GPS length 0 (no fix): decoded as an LBS report of the serving cell"),
    ("gt06-traccar-dec-118", "kind", "7979 0x32 with GPS length 0 (no fix): decoded as an LBS report of the serving cell"),
    ("gt06-traccar-dec-121", "derived_gps_present", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-121", "position", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-122", "derived_gps_present", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-122", "position", "0x34 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-126", "text", "0x15 with command length byte 0: the hub recovers the text up to the language word (derived left it empty)"),
    ("gt06-traccar-dec-129", "position", "0x21 text describes a position in prose: the hub passes the text on, it does not parse positions from it"),
    ("gt06-traccar-dec-137", "text", "0x15 with command length byte 0: the hub recovers the text up to the language word (derived left it empty)"),
    ("gt06-traccar-dec-151", "derived_gps_present", "0x1e is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-151", "position", "0x1e is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-160", "crc_ok", "short login (IMEI + version byte, no serial/CRC); `checks` looked for a CRC"),
    ("gt06-traccar-dec-162", "serial", "length 1 leaves no room for serial/CRC: serial None (derived read the start marker as a serial)"),
    ("gt06-traccar-dec-165", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-166", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-167", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-167", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-168", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-168", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-169", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-169", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-dec-170", "power", "device model LW4G-4B layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-171", "alarm", "device model LW4G-4B layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-172", "power", "device model SEEWORLD layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-173", "power", "device model R11 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-174", "kind", "device model NT20 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-174", "derived_gps_present", "device model NT20 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-175", "kind", "device model XT40 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-175", "derived_gps_present", "device model XT40 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-175", "power", "device model XT40 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-177", "derived_gps_present", "device model XT40 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-178", "alarm", "device model G18 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-179", "kind", "device model QH302R layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-179", "derived_gps_present", "device model QH302R layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-179", "position", "device model QH302R layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-183", "derived_gps_present", "device model VL103 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-183", "position", "device model VL103 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-185", "derived_gps_present", "device model VL103 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-dec-185", "battery", "device model VL103 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-frame-02", "crc_ok", "short login (IMEI + version byte, no serial/CRC); `checks` looked for a CRC"),
    ("gt06-traccar-hist-01", "battery", "hist record: an older traccar read a voltage from the alarm/language bytes"),
    ("gt06-traccar-hist-02", "power", "0x36 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-hist-04", "position", "0x17 RFID variant (standard framing, CRC ok): vendor type kept raw"),
    ("gt06-traccar-hist-06", "derived_gps_present", "0x61 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-hist-08", "alarm", "device model R11 layout (traccar model override); the hub decodes the standard layout only"),
    ("gt06-traccar-hist-09", "derived_gps_present", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
    ("gt06-traccar-hist-09", "alarm", "0x95 is a vendor type the hub keeps raw (Message::Unknown)"),
];

/// traccar attributes of vendor extensions the hub does not decode (it keeps such bodies
/// raw as `Message::Unknown` or leaves the field out of its model).
const NOT_DECODED_ATTRIBUTES: &[(&str, &str)] = &[
    (
        "altitude",
        "0x31/0x32 vendor altitude field: not in the hub's location model",
    ),
    (
        "batteryLevel",
        "vendor percentage fields (0x36, model layouts): not decoded",
    ),
    (
        "door",
        "0x94 sub-type 0x05 door bits: kept raw in Message::Info",
    ),
    (
        "driverUniqueId",
        "RFID/iButton ids of vendor types (0x61, 0x17, 0x25, 0x94/0x1B): kept raw",
    ),
    ("drivingTime", "vendor type field: kept raw"),
    (
        "event",
        "0x95 dashcam events and model-specific codes: kept raw",
    ),
    ("eventFiles", "0x95 dashcam event file names: kept raw"),
    ("hours", "NT20 engine hours (model layout): not decoded"),
    (
        "humidity",
        "0x94 sub-type 0x1E and vendor 0x22 tails: kept raw",
    ),
    (
        "networkTechnology",
        "0x94 sub-type 0x0B one-byte network flag: kept raw",
    ),
    ("result", "peripheral/serial passthrough types: kept raw"),
    (
        "serial",
        "0x94 sub-type 0x1B RFID text (traccar attribute named serial): kept raw",
    ),
    ("steps", "pedometer vendor type: kept raw"),
    ("tag1Temp", "BLE tag vendor type: kept raw"),
    ("temp1", "temperature sensor vendor types: kept raw"),
];

/// Decoded result of one record: the frames cut from it and how the buffer ended.
struct Outcome {
    frames: Vec<Decoded>,
    need_more: bool,
    error: Option<DecodeError>,
}

fn run_stream(buf: &[u8]) -> Outcome {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        if at == buf.len() {
            return Outcome {
                frames,
                need_more: false,
                error: None,
            };
        }
        match decode(&buf[at..], CrcPolicy::Warn) {
            Ok(Some(d)) => {
                at += d.consumed;
                frames.push(d);
            }
            Ok(None) => {
                return Outcome {
                    frames,
                    need_more: true,
                    error: None,
                }
            }
            Err(e) => {
                return Outcome {
                    frames,
                    need_more: false,
                    error: Some(e),
                }
            }
        }
    }
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Login(_) => "login",
        Message::Heartbeat(_) => "heartbeat",
        Message::Location(_) => "location",
        Message::Alarm(_) => "alarm",
        Message::Lbs(_) => "lbs",
        Message::Wifi(_) => "wifi",
        Message::CommandReply(_) => "command_reply",
        Message::OnlineCommand(_) => "online_command",
        Message::TimeRequest => "time_request",
        Message::TimeReply(_) => "time_reply",
        Message::Info { .. } => "info",
        Message::Ack => "ack",
        Message::Unknown { .. } => "unknown",
    }
}

/// The message kind the hub's decoder gives each protocol number in its documented form.
fn expected_kind(protocol: u8) -> &'static str {
    match protocol {
        0x01 => "login",
        0x13 | 0x23 => "heartbeat",
        0x10 | 0x11 | 0x12 | 0x22 | 0x32 | 0x37 | 0xA0 => "location",
        0x16 | 0x19 | 0x26 | 0x27 | 0xA4 => "alarm",
        0x18 | 0x28 => "lbs",
        0x2C | 0x69 => "wifi",
        0x15 | 0x21 => "command_reply",
        0x80 => "online_command",
        0x8A => "time_request",
        0x94 => "info",
        _ => "unknown",
    }
}

fn gps_of(m: &Message) -> Option<&Gps> {
    match m {
        Message::Location(l) => Some(&l.gps),
        Message::Alarm(a) => a.gps.as_ref(),
        _ => None,
    }
}

fn serving_cell(m: &Message) -> Option<Cell> {
    match m {
        Message::Location(l) => l.cell,
        Message::Alarm(a) => a.cell,
        Message::Lbs(l) => l.cells.first().copied(),
        Message::Wifi(w) => w.cells.first().copied(),
        _ => None,
    }
}

/// traccar's alarm name for an alarm code (default device model, reference §4.6).
fn traccar_alarm_name(code: u8) -> Option<&'static str> {
    Some(match code {
        0x01 => "sos",
        0x02 => "powerCut",
        0x03 | 0x09 => "vibration",
        0x04 => "geofenceEnter",
        0x05 => "geofenceExit",
        0x06 => "overspeed",
        0x0C | 0x13 | 0x25 | 0x32 => "tampering",
        0x0E | 0x0F | 0x19 => "lowBattery",
        0x11 => "powerOff",
        0x14 => "door",
        0x18 => "removing",
        0x23 => "fallDown",
        0x26 | 0x29 | 0xF0 => "hardAcceleration",
        0x1A | 0x27 | 0x28 | 0xF1 => "hardBraking",
        0x1B | 0x2A | 0x2B | 0x2E => "hardCornering",
        0x2C => "accident",
        _ => return None,
    })
}

struct Checker<'a> {
    id: &'a str,
    differences: BTreeSet<(String, String)>,
    checked: usize,
}

impl Checker<'_> {
    fn check(&mut self, name: &str, ok: bool, detail: impl FnOnce() -> String) {
        self.checked += 1;
        if !ok {
            let d = detail();
            eprintln!("difference {} {name}: {d}", self.id);
            self.differences
                .insert((self.id.to_owned(), name.to_owned()));
        }
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

fn check_record(rec: &Value, c: &mut Checker) {
    let buf = bytes(rec["hex"].as_str().unwrap_or_default());
    let expect = &rec["expect"];
    let derived = &rec["derived"];
    let checks = &rec["checks"];
    let out = run_stream(&buf);

    c.check("framing", out.error.is_none(), || {
        format!("{:?}", out.error)
    });
    if let Some(want) = checks["frames_in_string"].as_u64() {
        c.check("frames_in_string", out.frames.len() as u64 == want, || {
            format!("{} frames", out.frames.len())
        });
    }
    let whole = checks["frames_in_string"].is_null();
    c.check(
        "one_frame",
        !whole || (out.frames.len() == 1 && !out.need_more),
        || format!("{} frames, need_more {}", out.frames.len(), out.need_more),
    );
    let Some(d) = out.frames.first() else {
        return;
    };
    let f = &d.frame;
    c.check("skipped", d.skipped == 0, || format!("{}", d.skipped));
    if let Some(want) = expect["framer_output_hex"].as_str() {
        c.check(
            "framer_output_hex",
            hex::encode(&buf[..d.consumed]) == want,
            || hex::encode(&buf[..d.consumed]),
        );
    }
    c.check(
        "extended",
        f.extended == (rec["variant"] == "extended_7979"),
        || format!("{}", f.extended),
    );
    let protocol = rec["message_type"]
        .as_str()
        .and_then(|s| u8::from_str_radix(s.trim_start_matches("0x"), 16).ok());
    c.check("protocol", protocol == Some(f.protocol), || {
        format!("{:02x}", f.protocol)
    });
    let want_crc = checks["crc_ok"]
        .as_bool()
        .or(checks["crc_ok_first_frame"].as_bool());
    c.check("crc_ok", f.crc_ok == want_crc, || format!("{:?}", f.crc_ok));

    let m = &f.message;
    let want_kind = match (&f.message, f.protocol, f.serial) {
        (Message::Ack, _, _) => "ack",
        // 0x17 without serial/CRC is the WiFi AP-count form; with them, a vendor type.
        (_, 0x17, None) => "wifi",
        (_, p, _) => expected_kind(p),
    };
    c.check("kind", kind(m) == want_kind, || {
        format!("{} (expected {want_kind})", kind(m))
    });

    // --- derived: our own cross-check decode of the record ---
    if let Some(serial) = derived["serial"].as_u64() {
        c.check("serial", f.serial.map(u64::from) == Some(serial), || {
            format!("{:?}", f.serial)
        });
    }
    if let Message::Login(l) = m {
        if let Some(imei) = derived["imei"].as_str() {
            c.check("imei", l.imei.as_str() == imei, || l.imei.to_string());
        }
        let type_id = derived["type_id"]
            .as_str()
            .and_then(|s| u16::from_str_radix(s, 16).ok());
        c.check("type_id", l.type_id == type_id, || {
            format!("{:?}", l.type_id)
        });
        let tz = derived["timezone_offset_minutes"].as_i64();
        c.check("timezone", l.timezone_minutes.map(i64::from) == tz, || {
            format!("{:?}", l.timezone_minutes)
        });
    }
    let gps = gps_of(m);
    if let Some(t) = derived["time_utc"].as_str() {
        c.check("derived_gps_present", gps.is_some(), || kind(m).to_owned());
        if let Some(g) = gps {
            let want: DateTime<Utc> = t.parse().expect("vector time");
            c.check("time_utc", g.time == want, || g.time.to_rfc3339());
            let lat = derived["latitude"].as_f64().unwrap_or(f64::NAN);
            let lon = derived["longitude"].as_f64().unwrap_or(f64::NAN);
            c.check("latitude", close(g.latitude, lat, 1e-6), || {
                format!("{}", g.latitude)
            });
            c.check("longitude", close(g.longitude, lon, 1e-6), || {
                format!("{}", g.longitude)
            });
            c.check(
                "course",
                Some(u64::from(g.course)) == derived["course"].as_u64(),
                || format!("{}", g.course),
            );
            c.check(
                "gps_valid",
                Some(g.positioned) == derived["gps_valid"].as_bool(),
                || format!("{}", g.positioned),
            );
            if let Some(s) = derived["satellites"].as_u64() {
                c.check("satellites", u64::from(g.satellites) == s, || {
                    format!("{}", g.satellites)
                });
            }
            if let Some(s) = derived["speed_kmh"].as_u64() {
                c.check("speed_kmh", u64::from(g.speed_kmh) == s, || {
                    format!("{}", g.speed_kmh)
                });
            }
            if let Some(acc) = derived["acc_on"].as_bool() {
                c.check("acc_on", g.acc == Some(acc), || format!("{:?}", g.acc));
            }
        }
    }
    if let Some(mcc) = derived["mcc"].as_u64() {
        let cell = serving_cell(m);
        c.check("cell", cell.is_some(), || "no cell".to_owned());
        if let Some(cell) = cell {
            c.check("mcc", u64::from(cell.mcc) == mcc, || {
                format!("{}", cell.mcc)
            });
            c.check(
                "mnc",
                Some(u64::from(cell.mnc)) == derived["mnc"].as_u64(),
                || format!("{}", cell.mnc),
            );
            c.check(
                "lac",
                Some(u64::from(cell.lac)) == derived["lac"].as_u64(),
                || format!("{}", cell.lac),
            );
            c.check(
                "cell_id",
                Some(cell.cell_id) == derived["cell_id"].as_u64(),
                || format!("{}", cell.cell_id),
            );
        }
    }
    if let Some(ti) = derived["terminal_info"].as_u64() {
        let status = match m {
            Message::Heartbeat(h) => Some((
                h.terminal_info.0,
                h.voltage_level,
                h.gsm_signal,
                h.alarm_code,
                h.language,
            )),
            Message::Alarm(a) => Some((
                a.terminal_info.0,
                Some(a.voltage_level),
                a.gsm_signal,
                a.alarm_code,
                a.language,
            )),
            _ => None,
        };
        c.check("status_present", status.is_some(), || kind(m).to_owned());
        if let Some((info, volt, gsm, alarm, lang)) = status {
            c.check("terminal_info", u64::from(info) == ti, || format!("{info}"));
            c.check(
                "voltage_level",
                volt.map(u64::from) == derived["voltage_level"].as_u64(),
                || format!("{volt:?}"),
            );
            c.check(
                "gsm_signal",
                Some(u64::from(gsm)) == derived["gsm_signal"].as_u64(),
                || format!("{gsm}"),
            );
            c.check(
                "alarm_code",
                Some(u64::from(alarm)) == derived["alarm_code"].as_u64(),
                || format!("{alarm}"),
            );
            c.check(
                "language",
                Some(u64::from(lang)) == derived["language"].as_u64(),
                || format!("{lang}"),
            );
        }
    }
    if let Some(reply) = derived["reply_derived"].as_str() {
        let ours = match (m, f.serial) {
            (Message::Wifi(w), None) => Some(encode_wifi_reply(f.protocol, w.time_raw)),
            (_, Some(serial)) => Some(encode_ack(f.protocol, serial)),
            _ => None,
        };
        c.check(
            "reply_derived",
            ours.as_deref().map(hex::encode).as_deref() == Some(reply),
            || format!("{:?}", ours.map(hex::encode)),
        );
    }
    if let Some(text) = derived["text"].as_str() {
        let ours = match m {
            Message::CommandReply(r) => Some((r.server_flag, r.content.as_str())),
            Message::OnlineCommand(o) => Some((o.server_flag, o.command.as_str())),
            _ => None,
        };
        c.check("text", ours.map(|o| o.1) == Some(text), || {
            format!("{ours:?}")
        });
        let flag = derived["server_flag"]
            .as_str()
            .and_then(|s| u32::from_str_radix(s, 16).ok());
        c.check("server_flag", ours.map(|o| o.0) == flag, || {
            format!("{ours:?}")
        });
    }
    if let Some(sub) = derived["info_subtype"].as_str() {
        let want = u8::from_str_radix(sub.trim_start_matches("0x"), 16).ok();
        let ours = match m {
            Message::Info { sub_type, .. } => Some(*sub_type),
            _ => None,
        };
        c.check("info_subtype", ours == want, || format!("{ours:?}"));
    }
    if let Some(bcd) = derived["time_bcd"].as_str() {
        let ours = match m {
            Message::Wifi(w) => Some(hex::encode(w.time_raw)),
            _ => None,
        };
        c.check("time_bcd", ours.as_deref() == Some(bcd), || {
            format!("{ours:?}")
        });
    }

    // --- expect: what the peer's test asserts ---
    for (key, value) in expect.as_object().into_iter().flatten() {
        match key.as_str() {
            "position" => {
                let want = value.as_bool().unwrap_or(false);
                c.check("position", gps.is_some() == want, || kind(m).to_owned());
            }
            "time" => {
                let want: Option<DateTime<Utc>> = value.as_str().and_then(|s| s.parse().ok());
                c.check("time", gps.map(|g| g.time) == want, || format!("{gps:?}"));
            }
            "valid" => c.check(
                "valid",
                gps.map(|g| g.positioned) == value.as_bool(),
                || format!("{gps:?}"),
            ),
            "latitude" | "longitude" => {
                let tol = expect["tolerance_deg"].as_f64().unwrap_or(1e-5);
                let ours = gps.map(|g| {
                    if key == "latitude" {
                        g.latitude
                    } else {
                        g.longitude
                    }
                });
                let want = value.as_f64().unwrap_or(f64::NAN);
                c.check(key, ours.is_some_and(|v| close(v, want, tol)), || {
                    format!("{ours:?}")
                });
            }
            "tolerance_deg" | "decodes" | "one_complete_frame" | "framer_output_hex" => {}
            "has_attributes" => {
                c.check("has_attributes", kind(m) != "ack", || kind(m).to_owned());
            }
            "alarm" => {
                // traccar names the alarm byte, or else the terminal-info alarm bits.
                let (code, bits) = match m {
                    Message::Alarm(a) => (Some(a.alarm_code), Some(a.terminal_info.alarm_bits())),
                    _ => (None, None),
                };
                let by_code = code.and_then(traccar_alarm_name);
                let by_bits = bits.and_then(|b| match b {
                    1 => Some("vibration"),
                    2 => Some("powerCut"),
                    3 => Some("lowBattery"),
                    4 => Some("sos"),
                    6 => Some("geofence"),
                    7 => Some("removing"),
                    _ => None,
                });
                let want = value.as_str();
                c.check("alarm", by_code == want || by_bits == want, || {
                    format!("code {code:?} -> {by_code:?}, bits {bits:?} -> {by_bits:?}")
                });
            }
            "ignition" => {
                let ours = match m {
                    Message::Location(l) => l.acc,
                    _ => None,
                };
                c.check("ignition", ours == value.as_bool(), || format!("{ours:?}"));
            }
            "power" | "battery" => {
                let ours = match m {
                    Message::Heartbeat(h) => h.battery_volts,
                    _ => m.info_external_volts(),
                };
                // null: the peer asserts the value is absent.
                let ok = match value.as_f64() {
                    Some(want) => ours.is_some_and(|v| close(v, want, 1e-9)),
                    None => ours.is_none(),
                };
                c.check(key, ok, || format!("{ours:?}"));
            }
            "iccid" => {
                let want = value.as_str().unwrap_or_default();
                let ours = match m {
                    Message::CommandReply(r) => r
                        .content
                        .contains(&format!("ICCID:{want}"))
                        .then(|| want.to_owned()),
                    _ => m.info_iccid(),
                };
                c.check("iccid", ours.as_deref() == Some(want), || {
                    format!("{ours:?}")
                });
            }
            "command_text" | "server_flag" | "serial" | "command_type"
                if rec["direction"] == "server_to_device" =>
            {
                let Message::OnlineCommand(o) = m else {
                    c.check(key, false, || kind(m).to_owned());
                    continue;
                };
                match key.as_str() {
                    "command_text" => c.check(key, value.as_str() == Some(&o.command), || {
                        o.command.clone()
                    }),
                    "server_flag" => c.check(
                        key,
                        value.as_str().and_then(|s| u32::from_str_radix(s, 16).ok())
                            == Some(o.server_flag),
                        || format!("{}", o.server_flag),
                    ),
                    "serial" => c.check(key, value.as_u64() == f.serial.map(u64::from), || {
                        format!("{:?}", f.serial)
                    }),
                    // engineStop is traccar's name for the command that produced "Relay,1#".
                    _ => c.check(key, o.command == "Relay,1#", || o.command.clone()),
                }
            }
            other => {
                c.check(
                    "attribute_accounted",
                    NOT_DECODED_ATTRIBUTES
                        .iter()
                        .any(|(name, _)| *name == other),
                    || format!("traccar attribute {other} = {value}"),
                );
            }
        }
    }
}

#[test]
fn conformance_with_every_vector() {
    let records: Vec<Value> = VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector line is JSON"))
        .collect();
    assert_eq!(records.len(), 199, "vector file holds 199 GT06 records");

    let mut differences = BTreeSet::new();
    let mut checked = 0;
    let mut clean = 0;
    let mut ids = BTreeSet::new();
    for rec in &records {
        let id = rec["id"].as_str().expect("vector id");
        assert!(ids.insert(id), "duplicate vector id {id}");
        let mut c = Checker {
            id,
            differences: BTreeSet::new(),
            checked: 0,
        };
        check_record(rec, &mut c);
        checked += c.checked;
        if c.differences.is_empty() {
            clean += 1;
        }
        differences.extend(c.differences);
    }
    let accepted: BTreeSet<(String, String)> = ACCEPTED
        .iter()
        .map(|(id, what, _)| ((*id).to_owned(), (*what).to_owned()))
        .collect();
    let unexpected: Vec<_> = differences.difference(&accepted).collect();
    let stale: Vec<_> = accepted.difference(&differences).collect();
    let with_accepted = ids.len() - clean;
    println!(
        "gt06 conformance: {} vectors, {clean} match every check, {with_accepted} with \
         documented differences ({} entries), {checked} checks run",
        ids.len(),
        accepted.len()
    );
    assert!(
        unexpected.is_empty(),
        "undocumented differences: {unexpected:#?}"
    );
    assert!(
        stale.is_empty(),
        "documented differences that no longer occur: {stale:#?}"
    );
    assert_eq!(ids.len(), records.len());
}

// ---------------------------------------------------------------------------------------
// Framing edge cases.
// ---------------------------------------------------------------------------------------

/// Reference E2: heartbeat, serial 442, CRC 0xAF54.
const HEARTBEAT_E2: &str = "78780a13440604000201baaf540d0a";
/// Login of 864717003283581, serial 9.
const LOGIN: &str = "78780d01086471700328358100093f040d0a";
/// 0x22 GPS+LBS (VL103 capture, serial 677).
const LOCATION_22: &str =
    "787822221607160f1000cf0225e03f0bd723182c149701cc0075c300933301000002a5f0860d0a";

#[test]
fn crc_mismatch_is_marked_under_warn() {
    let mut buf = bytes(HEARTBEAT_E2);
    buf[11] ^= 0xFF;
    let d = decode(&buf, CrcPolicy::Warn).unwrap().unwrap();
    assert_eq!(d.frame.crc_ok, Some(false));
    assert!(matches!(d.frame.message, Message::Heartbeat(_)));
    assert_eq!(d.consumed, buf.len());
}

#[test]
fn crc_mismatch_is_an_error_under_reject() {
    let mut buf = bytes(HEARTBEAT_E2);
    buf[11] ^= 0xFF;
    assert_eq!(
        decode(&buf, CrcPolicy::Reject),
        Err(DecodeError::Crc {
            got: 0xAF54 ^ 0xFF00,
            expected: 0xAF54
        })
    );
}

#[test]
fn valid_crc_passes_reject() {
    let d = decode_one(HEARTBEAT_E2, CrcPolicy::Reject);
    assert_eq!(d.frame.crc_ok, Some(true));
    assert_eq!(d.frame.serial, Some(442));
}

#[test]
fn every_prefix_of_a_frame_needs_more_bytes() {
    let frames = [
        HEARTBEAT_E2,
        LOGIN,
        LOCATION_22,
        // 7979 info, WiFi AP-count 0x69 and 0x17, short heartbeat, ZhongXun 0x10, short login.
        "79790020940a035985708236675805200502187214018966051912408052452f000355560d0a",
        "7878006919012105090303028f01007549e05a00bc9c5c5a007a8d1a5a0d0a",
        "787808171709281135331491827b75594dc8d719a9708452cad719a9708550cad719a97086521491827b75574cac9e17b30808",
        "787808134606020002044dc5050d0a",
        "7878121011091c0b1b2999058508040097a89e0034520d0a",
        "78780d0103563140414198583c0d0a",
    ];
    for hex_str in frames {
        let buf = bytes(hex_str);
        for n in 0..buf.len() {
            assert_eq!(
                decode(&buf[..n], CrcPolicy::Reject),
                Ok(None),
                "prefix of {n} bytes of {hex_str}"
            );
        }
    }
}

#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    assert_eq!(
        decode(&bytes("7979090094"), CrcPolicy::Warn),
        Err(DecodeError::TooLong(0x0900 + 6))
    );
}

#[test]
fn largest_allowed_length_waits_for_bytes() {
    let len = (MAX_FRAME_LEN - 6) as u16;
    let mut buf = vec![0x79, 0x79];
    buf.extend_from_slice(&len.to_be_bytes());
    buf.push(0x94);
    assert_eq!(decode(&buf, CrcPolicy::Warn), Ok(None));
}

#[test]
fn wifi_counts_beyond_the_maximum_are_refused() {
    // 255 APs and 255 cells: 10 + 7*255 + 1 + 3 + 5*255 + 2 bytes.
    let mut buf = vec![0x78, 0x78, 0xFF, 0x69];
    buf.resize(10 + 7 * 255, 0x11);
    buf.push(0xFF);
    assert_eq!(
        decode(&buf, CrcPolicy::Warn),
        Err(DecodeError::TooLong(10 + 7 * 255 + 1 + 3 + 5 * 255 + 2))
    );
}

#[test]
fn garbage_before_and_between_frames_is_skipped_and_counted() {
    let mut buf = bytes("ff0012");
    buf.extend(bytes(LOGIN));
    buf.extend(bytes("0d0a0d"));
    buf.extend(bytes(HEARTBEAT_E2));
    let first = decode(&buf, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(first.skipped, 3);
    assert_eq!(first.consumed, 3 + 18);
    assert!(matches!(first.frame.message, Message::Login(_)));
    let second = decode(&buf[first.consumed..], CrcPolicy::Reject)
        .unwrap()
        .unwrap();
    assert_eq!(second.skipped, 3);
    assert_eq!(first.consumed + second.consumed, buf.len());
    assert_eq!(second.frame.serial, Some(442));
}

#[test]
fn garbage_up_to_the_bound_is_tolerated() {
    let mut buf = vec![0x55; MAX_GARBAGE];
    buf.extend(bytes(HEARTBEAT_E2));
    let d = decode(&buf, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(d.skipped, MAX_GARBAGE);
}

#[test]
fn garbage_beyond_the_bound_is_an_error() {
    let mut buf = vec![0x55; MAX_GARBAGE + 1];
    buf.extend(bytes(HEARTBEAT_E2));
    assert_eq!(
        decode(&buf, CrcPolicy::Reject),
        Err(DecodeError::BadStart(0x55, 0x55))
    );
}

#[test]
fn short_garbage_without_a_marker_waits() {
    assert_eq!(decode(&[0x55; MAX_GARBAGE], CrcPolicy::Warn), Ok(None));
    // A lone 0x78 at the end may be the first half of a marker.
    let mut buf = vec![0x55; 10];
    buf.push(0x78);
    assert_eq!(decode(&buf, CrcPolicy::Warn), Ok(None));
}

#[test]
fn two_frames_back_to_back() {
    let mut buf = bytes(LOGIN);
    buf.extend(bytes(LOCATION_22));
    let first = decode(&buf, CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(first.consumed, 18);
    let second = decode(&buf[18..], CrcPolicy::Reject).unwrap().unwrap();
    assert_eq!(second.consumed, buf.len() - 18);
    assert!(matches!(second.frame.message, Message::Location(_)));
}

#[test]
fn three_7979_frames_in_one_buffer() {
    let buf = bytes(
        &VECTORS
            .lines()
            .find(|l| l.contains("\"gt06-traccar-dec-152\""))
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
            .and_then(|v| v["hex"].as_str().map(str::to_owned))
            .expect("dec-152 present"),
    );
    let out = run_stream(&buf);
    assert_eq!(out.frames.len(), 3);
    assert!(!out.need_more);
    let serials: Vec<_> = out.frames.iter().map(|d| d.frame.serial).collect();
    assert_eq!(serials, [Some(0x2a), Some(0x2d), Some(0x30)]);
}

#[test]
fn stop_bytes_out_of_place_are_an_error() {
    let mut buf = bytes(HEARTBEAT_E2);
    let n = buf.len();
    buf[n - 1] = 0x0B;
    assert_eq!(decode(&buf, CrcPolicy::Warn), Err(DecodeError::BadStop));
}

#[test]
fn length_too_small_for_a_protocol_number_is_an_error() {
    assert_eq!(
        decode(&bytes("787800130d0a"), CrcPolicy::Warn),
        Err(DecodeError::BadStop)
    );
}

#[test]
fn unknown_protocol_keeps_its_content() {
    let frame = Frame {
        extended: false,
        protocol: 0x77,
        serial: Some(5),
        crc_ok: Some(true),
        message: Message::Unknown {
            content: vec![1, 2, 3],
        },
    };
    let d = decode(&encode_to_vec(&frame), CrcPolicy::Reject)
        .unwrap()
        .unwrap();
    assert_eq!(d.frame, frame);
}

#[test]
fn known_protocol_with_a_short_body_is_unknown_not_an_error() {
    // 0x22 with 3 content bytes.
    let frame = Frame {
        extended: false,
        protocol: 0x22,
        serial: Some(1),
        crc_ok: Some(true),
        message: Message::Unknown {
            content: vec![0x10, 0x01, 0x01],
        },
    };
    let d = decode(&encode_to_vec(&frame), CrcPolicy::Reject)
        .unwrap()
        .unwrap();
    assert_eq!(d.frame.message, frame.message);
}

#[test]
fn location_frame_fields() {
    let d = decode_one(LOCATION_22, CrcPolicy::Reject);
    let Message::Location(l) = d.frame.message else {
        panic!("not a location: {:?}", d.frame.message);
    };
    assert_eq!(
        l.gps.time,
        Utc.with_ymd_and_hms(2022, 7, 22, 15, 16, 0).unwrap()
    );
    assert_eq!(l.gps.satellites, 15);
    assert!((l.gps.latitude - 20.020373).abs() < 1e-6);
    assert!((l.gps.longitude - 110.360333).abs() < 1e-6);
    assert_eq!(l.gps.speed_kmh, 44);
    assert_eq!(l.gps.course, 151);
    assert!(l.gps.positioned);
    assert_eq!(
        l.cell,
        Some(Cell {
            mcc: 460,
            mnc: 0,
            lac: 0x75C3,
            cell_id: 0x009333,
            rssi: None
        })
    );
    assert_eq!(l.acc, Some(true));
    assert_eq!(l.upload_mode, Some(0));
    assert!(!l.reupload);
}

#[test]
fn login_with_type_and_time_zone() {
    // Reference E1: type 0x100F, zone word 0x190A = UTC-4:00, language bits 10.
    let d = decode_one(
        "787811010864717003664467100f190a0002c6d20d0a",
        CrcPolicy::Reject,
    );
    assert_eq!(
        d.frame.message,
        Message::Login(Login {
            imei: Imei::parse("864717003664467").unwrap(),
            type_id: Some(0x100F),
            timezone_minutes: Some(-240),
            language: Some(2),
        })
    );
}

#[test]
fn mcc_bit15_selects_a_two_byte_mnc() {
    // 0xA0 (4G): MCC 0x81CC = 460 with a 2-byte MNC, LAC 4 bytes, CI 8 bytes.
    let d = decode_one(
        "78782aa015041007350eca027ac8a20c4658be00140081cc00000000287d0000000002ea5e010004000009dffc0d0a",
        CrcPolicy::Reject,
    );
    let Message::Location(l) = d.frame.message else {
        panic!("not a location");
    };
    let cell = l.cell.expect("cell");
    assert_eq!(
        (cell.mcc, cell.mnc, cell.lac, cell.cell_id),
        (460, 0, 0x287D, 0x02EA5E01)
    );
    assert_eq!(l.upload_mode, Some(4));
}

#[test]
fn mileage_from_0x37_modules() {
    let d = decode_one(
        "7878353714080d05000ac500a886eb0b7522f000100001fe0a05ea004f1b000001002e0400002328003b0217c0003c0401020001002c468a0d0a",
        CrcPolicy::Reject,
    );
    let Message::Location(l) = d.frame.message else {
        panic!("not a location");
    };
    assert_eq!(l.mileage_m, Some(9000));
}

#[test]
fn wifi_ap_count_frame_fields() {
    // Reference E5.
    let d = decode_one(
        "7878006919012105090303028f01007549e05a00bc9c5c5a007a8d1a5a0d0a",
        CrcPolicy::Reject,
    );
    assert_eq!(d.frame.serial, None);
    assert_eq!(d.frame.crc_ok, None);
    let Message::Wifi(w) = d.frame.message else {
        panic!("not wifi");
    };
    assert_eq!(w.time, Utc.with_ymd_and_hms(2019, 1, 21, 5, 9, 3).unwrap());
    assert!(w.aps.is_empty());
    assert_eq!(w.cells.len(), 3);
    assert_eq!((w.cells[0].mcc, w.cells[0].mnc), (655, 1));
    assert_eq!(
        (w.cells[2].lac, w.cells[2].cell_id, w.cells[2].rssi),
        (0x7A, 0x8D1A, Some(0x5A))
    );
}

#[test]
fn utf16_command_reply() {
    let d = decode_one(
        "797900262100000000020043006f006d006d0061006e00640020006500720072006f0072002100236e850d0a",
        CrcPolicy::Reject,
    );
    assert_eq!(
        d.frame.message,
        Message::CommandReply(CommandReply {
            server_flag: 0,
            content: "Command error!".to_owned()
        })
    );
}

#[test]
fn iccid_from_info_0x0a() {
    let d = decode_one(
        "79790020940a035985708236675805200502187214018966051912408052452f000355560d0a",
        CrcPolicy::Reject,
    );
    assert_eq!(
        d.frame.message.info_iccid().as_deref(),
        Some("8966051912408052452")
    );
}

#[test]
fn empty_body_is_an_ack_except_for_time_requests() {
    assert_eq!(
        decode_one("787805120099abec0d0a", CrcPolicy::Reject)
            .frame
            .message,
        Message::Ack
    );
    assert_eq!(
        decode_one("7878058a000688290d0a", CrcPolicy::Reject)
            .frame
            .message,
        Message::TimeRequest
    );
}

// ---------------------------------------------------------------------------------------
// Golden reply bytes.
// ---------------------------------------------------------------------------------------

#[test]
fn golden_login_reply() {
    assert_eq!(hex::encode(encode_ack(0x01, 9)), "78780501000955940d0a");
}

#[test]
fn golden_heartbeat_reply_e2() {
    assert_eq!(hex::encode(encode_ack(0x13, 442)), "7878051301bafb710d0a");
}

#[test]
fn golden_alarm_reply_e4() {
    assert_eq!(hex::encode(encode_ack(0x16, 28)), "78780516001c1b280d0a");
}

#[test]
fn golden_time_reply() {
    let now = Utc.with_ymd_and_hms(2015, 12, 29, 0, 0, 21).unwrap();
    assert_eq!(
        hex::encode_upper(encode_time_reply(now, 6)),
        "78780B8A0F0C1D0000150006F0860D0A"
    );
}

#[test]
fn golden_online_command() {
    assert_eq!(
        hex::encode(encode_online_command(0, "Relay,1#", 0)),
        "787812800c0000000052656c61792c312300009dee0d0a"
    );
}

#[test]
fn golden_wifi_reply_e5() {
    assert_eq!(
        hex::encode(encode_wifi_reply(
            0x69,
            [0x19, 0x01, 0x21, 0x05, 0x09, 0x03]
        )),
        "787800691901210509030d0a"
    );
}

#[test]
fn online_command_text_is_cut_at_a_character_boundary() {
    let long = "é".repeat(200); // 400 bytes
    let bytes = encode_online_command(1, &long, 1);
    let d = decode(&bytes, CrcPolicy::Reject).unwrap().unwrap();
    let Message::OnlineCommand(c) = d.frame.message else {
        panic!("not a command");
    };
    assert_eq!(c.command.len(), 250);
    assert!(long.starts_with(&c.command));
}

#[test]
fn long_short_form_frame_is_written_as_7979() {
    let frame = Frame {
        extended: false,
        protocol: 0x94,
        serial: Some(3),
        crc_ok: Some(true),
        message: Message::Info {
            sub_type: 0x04,
            data: vec![b'A'; 300],
        },
    };
    let bytes = encode_to_vec(&frame);
    assert_eq!(&bytes[..2], &[0x79, 0x79]);
    let d = decode(&bytes, CrcPolicy::Reject).unwrap().unwrap();
    assert!(d.frame.extended);
    assert_eq!(d.frame.message, frame.message);
}

// ---------------------------------------------------------------------------------------
// Round trips: decode(encode(frame)) == frame for everything the hub and simulator encode.
// ---------------------------------------------------------------------------------------

fn arb_time() -> impl Strategy<Value = DateTime<Utc>> {
    (
        0i32..=99,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
    )
        .prop_map(|(y, mo, d, h, mi, s)| Utc.with_ymd_and_hms(2000 + y, mo, d, h, mi, s).unwrap())
}

fn arb_gps() -> impl Strategy<Value = Gps> {
    (
        arb_time(),
        0u8..=15,
        (0u32..=162_000_000, any::<bool>()),
        (0u32..=324_000_000, any::<bool>()),
        any::<u8>(),
        0u16..360,
        any::<bool>(),
        any::<bool>(),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(
                time,
                satellites,
                (lat, south),
                (lon, west),
                speed_kmh,
                course,
                positioned,
                differential,
                acc,
            )| {
                let sign = |neg: bool| if neg { -1.0 } else { 1.0 };
                Gps {
                    time,
                    satellites,
                    latitude: sign(south) * f64::from(lat) / 1_800_000.0,
                    longitude: sign(west) * f64::from(lon) / 1_800_000.0,
                    speed_kmh,
                    course,
                    positioned,
                    differential,
                    acc,
                }
            },
        )
}

fn arb_cell() -> impl Strategy<Value = Cell> {
    (0u16..1000, 0u16..1000, any::<u16>(), 0u32..=0xFF_FFFF).prop_map(|(mcc, mnc, lac, ci)| Cell {
        mcc,
        mnc,
        lac: u32::from(lac),
        cell_id: u64::from(ci),
        rssi: None,
    })
}

/// Serving cell + up to 6 non-zero neighbours sharing its MCC/MNC, each with an RSSI.
fn arb_cells() -> impl Strategy<Value = Vec<Cell>> {
    (
        arb_cell(),
        any::<u8>(),
        proptest::collection::vec((1u16..=u16::MAX, 0u32..=0xFF_FFFF, any::<u8>()), 0..=6),
    )
        .prop_map(|(serving, rssi, neighbours)| {
            let mut cells = vec![Cell {
                rssi: Some(rssi),
                ..serving
            }];
            cells.extend(neighbours.into_iter().map(|(lac, ci, rssi)| Cell {
                lac: u32::from(lac),
                cell_id: u64::from(ci),
                rssi: Some(rssi),
                ..serving
            }));
            cells
        })
}

fn arb_login() -> impl Strategy<Value = Login> {
    (
        "[0-9]{15}",
        proptest::option::of((
            any::<u16>(),
            proptest::option::of((0i16..=14, 0i16..60, any::<bool>(), 0u8..=3)),
        )),
    )
        .prop_map(|(imei, ext)| {
            let imei = Imei::parse(&imei).unwrap();
            match ext {
                None => Login {
                    imei,
                    type_id: None,
                    timezone_minutes: None,
                    language: None,
                },
                Some((type_id, None)) => Login {
                    imei,
                    type_id: Some(type_id),
                    timezone_minutes: None,
                    language: None,
                },
                Some((type_id, Some((h, m, west, language)))) => Login {
                    imei,
                    type_id: Some(type_id),
                    timezone_minutes: Some(if west { -(h * 60 + m) } else { h * 60 + m }),
                    language: Some(language),
                },
            }
        })
}

fn binary_time_of(t: &DateTime<Utc>) -> [u8; 6] {
    use chrono::{Datelike, Timelike};
    [
        (t.year() - 2000) as u8,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    ]
}

fn arb_aps() -> impl Strategy<Value = Vec<WifiAp>> {
    proptest::collection::vec(
        (any::<[u8; 6]>(), any::<u8>()).prop_map(|(mac, rssi)| WifiAp {
            mac,
            rssi: i16::from(rssi),
        }),
        0..=8,
    )
}

/// (protocol, extended, message) triples the hub or the simulator encode.
fn arb_message() -> impl Strategy<Value = (u8, bool, Message)> {
    prop_oneof![
        (any::<u8>().prop_filter("0x8A is a time request", |p| *p != 0x8A)).prop_map(|p| (
            p,
            false,
            Message::Ack
        )),
        Just((0x8A, false, Message::TimeRequest)),
        arb_time().prop_map(|t| (0x8A, false, Message::TimeReply(t))),
        (any::<u32>(), "[ -~]{0,100}").prop_map(|(server_flag, command)| {
            (
                0x80,
                false,
                Message::OnlineCommand(OnlineCommand {
                    server_flag,
                    command,
                }),
            )
        }),
        arb_login().prop_map(|l| (0x01, false, Message::Login(l))),
        (any::<u8>(), any::<u8>(), 0u8..=4, any::<u8>(), any::<u8>()).prop_map(
            |(ti, level, gsm_signal, alarm_code, language)| {
                (
                    0x13,
                    false,
                    Message::Heartbeat(Heartbeat {
                        terminal_info: TerminalInfo(ti),
                        voltage_level: Some(level),
                        battery_volts: None,
                        gsm_signal,
                        alarm_code,
                        language,
                    }),
                )
            }
        ),
        (any::<u8>(), any::<u16>(), 0u8..=4, any::<u8>(), any::<u8>()).prop_map(
            |(ti, centivolts, gsm_signal, alarm_code, language)| {
                (
                    0x23,
                    false,
                    Message::Heartbeat(Heartbeat {
                        terminal_info: TerminalInfo(ti),
                        voltage_level: None,
                        battery_volts: Some(f64::from(centivolts) / 100.0),
                        gsm_signal,
                        alarm_code,
                        language,
                    }),
                )
            }
        ),
        (
            arb_gps(),
            arb_cell(),
            any::<bool>(),
            0u8..=0x0F,
            any::<bool>(),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(gps, cell, acc, mode, reupload, mileage_m)| {
                (
                    0x22,
                    false,
                    Message::Location(Location {
                        gps,
                        cell: Some(cell),
                        acc: Some(acc),
                        upload_mode: Some(mode),
                        reupload,
                        mileage_m,
                    }),
                )
            }),
        (arb_gps(), arb_cell()).prop_map(|(gps, cell)| {
            (
                0x12,
                false,
                Message::Location(Location {
                    gps,
                    cell: Some(cell),
                    acc: None,
                    upload_mode: None,
                    reupload: false,
                    mileage_m: None,
                }),
            )
        }),
        (
            prop_oneof![Just(0x16u8), Just(0x26u8)],
            proptest::option::of(arb_gps()),
            proptest::option::of(arb_cell()),
            (any::<u8>(), any::<u8>(), 0u8..=4, any::<u8>(), any::<u8>()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(
                |(protocol, gps, cell, (ti, level, gsm, alarm, lang), mileage)| {
                    (
                        protocol,
                        false,
                        Message::Alarm(Alarm {
                            gps,
                            cell,
                            terminal_info: TerminalInfo(ti),
                            voltage_level: level,
                            gsm_signal: gsm,
                            alarm_code: alarm,
                            language: lang,
                            fence: None,
                            mileage_m: if protocol == 0x26 { mileage } else { None },
                        }),
                    )
                }
            ),
        (any::<u32>(), "\\PC{0,60}").prop_map(|(server_flag, content)| {
            (
                0x21,
                true,
                Message::CommandReply(CommandReply {
                    server_flag,
                    content,
                }),
            )
        }),
        (any::<u32>(), "[ -~]{0,60}").prop_map(|(server_flag, content)| {
            (
                0x15,
                false,
                Message::CommandReply(CommandReply {
                    server_flag,
                    content,
                }),
            )
        }),
        (arb_time(), arb_cells(), any::<u8>()).prop_map(|(time, cells, ta)| {
            (
                0x28,
                false,
                Message::Lbs(LbsReport {
                    time,
                    cells,
                    timing_advance: Some(ta),
                }),
            )
        }),
        (arb_time(), arb_cells(), arb_aps()).prop_map(|(time, cells, aps)| {
            (
                0x2C,
                false,
                Message::Wifi(WifiReport {
                    time,
                    time_raw: binary_time_of(&time),
                    cells,
                    aps,
                }),
            )
        }),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(sub_type, data)| { (0x94, true, Message::Info { sub_type, data }) }),
    ]
}

/// WiFi AP-count form (0x69/0x17): BCD time, 2-byte cell ids, no serial, no CRC.
fn arb_wifi_ap_count_frame() -> impl Strategy<Value = Frame> {
    (
        prop_oneof![Just(0x69u8), Just(0x17u8)],
        arb_time(),
        arb_aps(),
        (0u16..1000, 0u8..=255),
        proptest::collection::vec((any::<u16>(), any::<u16>(), any::<u8>()), 0..=6),
    )
        .prop_map(|(protocol, time, aps, (mcc, mnc), cells)| {
            let bcd = |v: u8| ((v / 10) << 4) | (v % 10);
            Frame {
                extended: false,
                protocol,
                serial: None,
                crc_ok: None,
                message: Message::Wifi(WifiReport {
                    time,
                    time_raw: binary_time_of(&time).map(bcd),
                    cells: cells
                        .into_iter()
                        .map(|(lac, ci, rssi)| Cell {
                            mcc,
                            mnc: u16::from(mnc),
                            lac: u32::from(lac),
                            cell_id: u64::from(ci),
                            rssi: Some(rssi),
                        })
                        .collect(),
                    aps,
                }),
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encode_then_decode_gives_the_frame_back(
        (protocol, extended, message) in arb_message(),
        serial in any::<u16>(),
    ) {
        let frame = Frame { extended, protocol, serial: Some(serial), crc_ok: Some(true), message };
        let bytes = encode_to_vec(&frame);
        let d = decode(&bytes, CrcPolicy::Reject).unwrap().unwrap();
        prop_assert_eq!(d.consumed, bytes.len());
        prop_assert_eq!(d.skipped, 0);
        prop_assert_eq!(d.frame, frame);
    }

    #[test]
    fn wifi_ap_count_form_round_trips(frame in arb_wifi_ap_count_frame()) {
        let bytes = encode_to_vec(&frame);
        let d = decode(&bytes, CrcPolicy::Reject).unwrap().unwrap();
        prop_assert_eq!(d.consumed, bytes.len());
        prop_assert_eq!(d.frame, frame);
    }

    #[test]
    fn split_stream_decodes_like_a_whole_one(
        frames in proptest::collection::vec((arb_message(), any::<u16>()), 1..6),
        cut in any::<proptest::sample::Index>(),
    ) {
        let frames: Vec<Frame> = frames
            .into_iter()
            .map(|((protocol, extended, message), serial)| Frame {
                extended, protocol, serial: Some(serial), crc_ok: Some(true), message,
            })
            .collect();
        let mut stream = Vec::new();
        for f in &frames {
            encode(f, &mut stream);
        }
        // Feed the stream in two reads, as a socket might deliver it.
        let split = cut.index(stream.len() + 1);
        let mut buf = stream[..split].to_vec();
        let mut rest = &stream[split..];
        let mut got = Vec::new();
        loop {
            match decode(&buf, CrcPolicy::Reject).unwrap() {
                Some(d) => {
                    buf.drain(..d.consumed);
                    got.push(d.frame);
                }
                None if !rest.is_empty() => {
                    buf.extend_from_slice(rest);
                    rest = &[];
                }
                None => break,
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        for policy in [CrcPolicy::Warn, CrcPolicy::Reject] {
            if let Ok(Some(d)) = decode(&data, policy) {
                prop_assert!(d.consumed <= data.len());
                let _ = encode_to_vec(&d.frame);
            }
        }
    }
}
