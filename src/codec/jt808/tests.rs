//! JT/T 808 codec tests: every record of `tests/vectors/jt808.jsonl` accounted for (decoded
//! and compared with the peer's and our derived values, or listed with the reason it is
//! refused), golden replies, escaping and framing edge cases, subpackage reassembly, and
//! round-trip properties for every message the codec encodes.

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::Value;

use super::*;
use crate::codec::CrcPolicy;

const VECTORS: &str = include_str!("../../../tests/vectors/jt808.jsonl");

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test hex")
}

fn records() -> Vec<Value> {
    VECTORS
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("vector json"))
        .collect()
}

fn one(hex: &str, policy: CrcPolicy) -> Result<Packet, DecodeError> {
    let bytes = unhex(hex);
    let d = decode(&bytes, policy)?.expect("complete frame");
    assert_eq!(d.consumed, bytes.len(), "one frame uses the whole input");
    Ok(d.packet)
}

/// Frames refused by design, with the error kind expected and why.
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "jt808-traccar-dec-033",
        "encrypted",
        "vendor 0x5501: encryption bits set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-034",
        "encrypted",
        "vendor 0x5501: encryption bits set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-035",
        "encrypted",
        "vendor 0x5502: encryption bits set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-045",
        "encrypted",
        "vendor 0x5501: encryption bits set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-067",
        "encrypted",
        "vendor 0x5501: encryption bit set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-070",
        "encrypted",
        "vendor 0x5502: encryption bit set, 1-byte serial",
    ),
    (
        "jt808-traccar-dec-071",
        "body_length",
        "vendor 0x5501 with a 1-byte serial: header size fits no layout",
    ),
    (
        "jt808-go-decode-04",
        "encrypted",
        "RSA bit set: encrypted bodies are refused",
    ),
    (
        "jt808-go-decode-08",
        "check",
        "negative vector: XOR mismatch",
    ),
    (
        "jt808-go-decode-09",
        "body_length",
        "negative vector: body shorter than declared",
    ),
    (
        "jt808-fakeyanss-01",
        "check",
        "negative vector: escaped 7e check code that does not match",
    ),
    (
        "jt808-traccar-dec-046",
        "bad_escape",
        "traccar feeds de-escaped bytes: the phone's raw 7d is no valid escape",
    ),
    (
        "jt808-traccar-dec-051",
        "bad_escape",
        "traccar feeds de-escaped bytes: a raw 7d inside is no valid escape",
    ),
    (
        "jt808-traccar-dec-105",
        "bad_escape",
        "traccar feeds de-escaped bytes: a raw 7d inside is no valid escape",
    ),
    (
        "jt808-traccar-dec-112",
        "body_length",
        "vendor GL100: declares 122 body bytes, carries 107",
    ),
    (
        "jt808-smallchi-010",
        "body_length",
        "declares 47 body bytes, carries 53",
    ),
    (
        "jt808-smallchi-054",
        "body_length",
        "declares 69 body bytes, carries 70",
    ),
    (
        "jt808-smallchi-060",
        "body_length",
        "declares 58 body bytes, carries 45",
    ),
    (
        "jt808-traccar-dec-088",
        "body_length",
        "declares 50 body bytes, carries 40 (and fails XOR)",
    ),
    (
        "jt808-smallchi-062",
        "body_length",
        "declares 473 body bytes, carries 469 (and fails XOR)",
    ),
];

/// Frames whose XOR fails but which decode under `CrcPolicy::Warn`: SmallChi anonymised
/// the phone numbers of captured frames (and traccar edited vendor samples) without
/// recomputing the check code.
const CHECK_FAILS_ACCEPTED_UNDER_WARN: &[&str] = &[
    "jt808-traccar-dec-109",
    "jt808-traccar-dec-110",
    "jt808-smallchi-043",
    "jt808-smallchi-044",
    "jt808-smallchi-048",
    "jt808-smallchi-049",
    "jt808-smallchi-050",
    "jt808-smallchi-051",
    "jt808-smallchi-052",
    "jt808-smallchi-063",
    "jt808-smallchi-064",
    "jt808-smallchi-094",
    "jt808-smallchi-095",
    "jt808-smallchi-096",
    "jt808-smallchi-097",
    "jt808-smallchi-098",
    "jt808-smallchi-099",
    "jt808-smallchi-100",
    "jt808-smallchi-101",
];

/// Non-packet records (streams, escaping, framing, negative inputs) checked by
/// `vector_streams_and_escaping`.
const NON_PACKET_KINDS: &[&str] = &["stream", "escaping", "framing", "invalid", "text_frame"];

/// The on-wire form of a record: traccar fed some frames after de-escaping.
fn wire_hex(r: &Value) -> String {
    let d = &r["derived"];
    match d["wire_hex"].as_str() {
        Some(w) if d["layer_of_hex"] == "unescaped" => w.to_owned(),
        _ => r["hex"].as_str().expect("hex").to_owned(),
    }
}

/// A number, or a `0x..` hex string as some derived fields are written.
fn u(v: &Value) -> u64 {
    match v.as_str() {
        Some(h) => u64::from_str_radix(h.trim_start_matches("0x"), 16).expect("hex number"),
        None => v.as_u64().expect("number"),
    }
}

fn check_header(id: &str, h: &Header, d: &Value) {
    let msg_id = u16::from_str_radix(
        d["msg_id"]
            .as_str()
            .expect("msg_id")
            .trim_start_matches("0x"),
        16,
    )
    .expect("msg id hex");
    assert_eq!(h.msg_id, msg_id, "{id} msg id");
    assert_eq!(u64::from(h.serial), u(&d["serial"]), "{id} serial");
    assert_eq!(
        h.phone.digits(),
        d["terminal_phone_bcd"].as_str().expect("phone"),
        "{id} phone"
    );
    let layout_2019 = d["protocol_version"].is_number();
    assert_eq!(h.is_2019(), layout_2019, "{id} layout");
    if layout_2019 {
        assert_eq!(
            h.version.map(u64::from),
            d["protocol_version"].as_u64(),
            "{id} version"
        );
    }
    let quirk = d["version_flag_set_but_2013_layout"] == true
        || d["version_flag_clear_but_2019_layout"] == true;
    assert_eq!(h.version_flag_mismatch, quirk, "{id} version quirk");
    match h.package {
        Some(p) => {
            assert_eq!(u64::from(p.total), u(&d["package_total"]), "{id} total");
            assert_eq!(u64::from(p.index), u(&d["package_index"]), "{id} index");
        }
        None => assert!(d["package_total"].is_null(), "{id} not subpackaged"),
    }
}

fn check_location(id: &str, l: &Location, b: &Value) {
    let basic = &l.basic;
    assert_eq!(u64::from(basic.alarm.0), u(&b["alarm_flags"]), "{id} alarm");
    assert_eq!(
        u64::from(basic.status.0),
        u(&b["status_flags"]),
        "{id} status"
    );
    assert_eq!(u64::from(basic.latitude_e6), u(&b["lat_raw"]), "{id} lat");
    assert_eq!(u64::from(basic.longitude_e6), u(&b["lon_raw"]), "{id} lon");
    assert!(
        (basic.latitude() - b["latitude"].as_f64().expect("lat")).abs() < 1e-9,
        "{id}"
    );
    assert!(
        (basic.longitude() - b["longitude"].as_f64().expect("lon")).abs() < 1e-9,
        "{id}"
    );
    assert_eq!(
        u64::from(basic.altitude_m),
        u(&b["altitude_m"]),
        "{id} altitude"
    );
    assert_eq!(
        u64::from(basic.speed_dkmh),
        u(&b["speed_raw_0.1kmh"]),
        "{id} speed"
    );
    assert_eq!(u64::from(basic.course), u(&b["course"]), "{id} course");
    assert_eq!(basic.status.acc_on(), b["acc_on"] == true, "{id} acc");
    assert_eq!(
        basic.status.positioned(),
        b["gps_valid"] == true,
        "{id} valid"
    );
    assert_eq!(
        hex::encode(basic.time.0),
        b["time_bcd"].as_str().expect("time"),
        "{id} time"
    );
    if let Some(utc) = b["time_utc"].as_str() {
        let t = basic.time.to_utc().expect("valid time");
        assert_eq!(t.format("%Y-%m-%dT%H:%M:%SZ").to_string(), utc, "{id} utc");
    }
    if let Some(items) = b["additional_items"].as_array() {
        let mut ours: Vec<String> = Vec::new();
        for it in &l.items {
            let len = encode_body(
                false,
                &Message::Location(Location {
                    basic: BasicLocation::default(),
                    items: vec![it.clone()],
                    trailing: Vec::new(),
                }),
            )
            .expect("item encodes")
            .len()
                - 30;
            ours.push(format!("0x{:02x}:{len}", it.id()));
        }
        let theirs: Vec<String> = items
            .iter()
            .map(|v| v.as_str().expect("item").to_owned())
            .collect();
        // The derived walk stops at the first item that overruns the body; ours keeps the
        // rest in `trailing`, so compare the prefix the derived walk produced.
        assert_eq!(ours, theirs, "{id} items");
    }
    let add = &b["additional"];
    if let Some(m) = add["mileage_0.1km"].as_u64() {
        assert_eq!(
            l.item(0x01),
            Some(&LocationItem::Mileage(m as u32)),
            "{id} mileage"
        );
    }
    if let Some(m) = add["rssi"].as_u64() {
        assert_eq!(
            l.item(0x30),
            Some(&LocationItem::Signal(m as u8)),
            "{id} rssi"
        );
    }
    if let Some(m) = add["gnss_satellites"].as_u64() {
        assert_eq!(
            l.item(0x31),
            Some(&LocationItem::Satellites(m as u8)),
            "{id} sats"
        );
    }
}

fn check_body(id: &str, m: &Message, b: &Value) {
    match m {
        Message::Location(l) => check_location(id, l, b),
        Message::LocationReply {
            reply_serial,
            location,
        } => {
            assert_eq!(u64::from(*reply_serial), u(&b["reply_serial"]), "{id}");
            check_location(id, location, b);
        }
        Message::TerminalResponse(g) | Message::PlatformResponse(g) => {
            assert_eq!(u64::from(g.reply_serial), u(&b["reply_serial"]), "{id}");
            let rid = b["reply_msg_id"].as_str().expect("reply id");
            assert_eq!(format!("0x{:04x}", g.reply_id), rid, "{id}");
            assert_eq!(u64::from(g.result), u(&b["result"]), "{id}");
        }
        Message::Register(r) => {
            assert_eq!(u64::from(r.province), u(&b["province_id"]), "{id}");
            assert_eq!(u64::from(r.city), u(&b["city_id"]), "{id}");
            assert_eq!(r.manufacturer, b["maker_id"].as_str().unwrap_or(""), "{id}");
            assert_eq!(r.model, b["terminal_model"].as_str().unwrap_or(""), "{id}");
            assert_eq!(
                r.terminal_id,
                b["terminal_id"].as_str().unwrap_or(""),
                "{id}"
            );
            assert_eq!(u64::from(r.plate_color), u(&b["plate_color"]), "{id}");
            assert_eq!(r.plate, b["plate"].as_str().unwrap_or(""), "{id}");
            let layout = match r.layout {
                RegisterLayout::V2011 => "2011",
                RegisterLayout::V2013 => "2013",
                RegisterLayout::V2019 => "2019",
            };
            assert!(
                b["layout"].as_str().expect("layout").contains(layout),
                "{id} layout"
            );
        }
        Message::Auth(a) => {
            assert_eq!(a.auth_code, b["auth_code"].as_str().expect("code"), "{id}");
            assert_eq!(a.imei.as_deref(), b["imei"].as_str(), "{id}");
            assert_eq!(
                a.software_version.as_deref(),
                b["software_version"].as_str(),
                "{id}"
            );
        }
        Message::RegisterResponse(r) => {
            assert_eq!(u64::from(r.reply_serial), u(&b["reply_serial"]), "{id}");
            assert_eq!(u64::from(r.result), u(&b["result"]), "{id}");
            assert_eq!(r.auth_code.as_deref(), b["auth_code"].as_str(), "{id}");
        }
        Message::BatchLocation(bl) => {
            assert_eq!(bl.items.len() as u64, u(&b["count"]), "{id}");
            assert_eq!(u64::from(bl.kind), u(&b["batch_type"]), "{id}");
            for (l, want) in bl.items.iter().zip(b["items"].as_array().expect("items")) {
                assert!(
                    (l.basic.latitude() - want["latitude"].as_f64().expect("lat")).abs() < 1e-9
                );
                assert!(
                    (l.basic.longitude() - want["longitude"].as_f64().expect("lon")).abs() < 1e-9
                );
                assert_eq!(u64::from(l.basic.course), u(&want["course"]), "{id}");
            }
        }
        Message::Transparent { kind, data } => {
            assert_eq!(u64::from(*kind), u(&b["transparent_type"]), "{id}");
            assert_eq!(data.len() as u64, u(&b["transparent_length"]), "{id}");
        }
        Message::Text(t) => {
            assert_eq!(u64::from(t.flag), u(&b["text_flag"]), "{id}");
            let want = b["text"].as_str().expect("text");
            // The derived decode (like go-jt808) has no 2019 text-type byte; SmallChi's
            // asserts (type 1, "smallchi 518") match ours.
            let want = match t.text_type {
                Some(ty) => want.strip_prefix(char::from(ty)).expect("type byte first"),
                None => want,
            };
            assert_eq!(t.text, want, "{id}");
        }
        Message::LiveRequest(l) => {
            assert_eq!(l.server, b["server_ip"].as_str().expect("ip"), "{id}");
            assert_eq!(u64::from(l.tcp_port), u(&b["tcp_port"]), "{id}");
            assert_eq!(u64::from(l.udp_port), u(&b["udp_port"]), "{id}");
            assert_eq!(u64::from(l.channel), u(&b["channel"]), "{id}");
            assert_eq!(u64::from(l.data_type), u(&b["data_type"]), "{id}");
            assert_eq!(u64::from(l.stream), u(&b["stream_type"]), "{id}");
        }
        Message::LiveControl(c) => {
            assert_eq!(u64::from(c.channel), u(&b["channel"]), "{id}");
            assert_eq!(u64::from(c.command), u(&b["control"]), "{id}");
            assert_eq!(u64::from(c.close_kind), u(&b["close_av_type"]), "{id}");
            assert_eq!(u64::from(c.stream), u(&b["stream_type"]), "{id}");
        }
        Message::TerminalControl { command, .. } => {
            assert_eq!(u64::from(*command), u(&b["command_word"]), "{id}");
        }
        Message::ParamsReply(p) => {
            assert_eq!(u64::from(p.reply_serial), u(&b["reply_serial"]), "{id}");
        }
        Message::MediaData(md) => {
            assert_eq!(u64::from(md.event.media_id), u(&b["multimedia_id"]), "{id}");
            assert_eq!(u64::from(md.event.channel), u(&b["channel"]), "{id}");
            assert_eq!(md.data.len() as u64, u(&b["media_data_length"]), "{id}");
        }
        _ => {}
    }
}

/// Golden platform answers go-jt808 asserts (platform serial 0).
fn check_reply(id: &str, p: &Packet, reply_hex: &str) {
    let reply = unhex(reply_hex);
    let golden = one(reply_hex, CrcPolicy::Reject).expect("golden reply decodes");
    match &golden.message {
        Message::PlatformResponse(g) => {
            assert_eq!(
                encode_general_response(&p.header, 0, g.result),
                reply,
                "{id} 0x8001"
            );
        }
        Message::RegisterResponse(_) => {
            let h = Header::reply_to(&p.header, 0x8100, 0);
            assert_eq!(
                encode(&h, &golden.message).expect("encodes"),
                reply,
                "{id} 0x8100"
            );
        }
        // 0x8800 / 0x9212 are outside this codec's message set: decoding them with a valid
        // check code (above) is all that is asserted.
        // go-jt808's parse-15 "reply" is an 0x8001 with an empty body: only its header
        // (same phone as the uplink) is meaningful.
        Message::Invalid { body, .. } if body.is_empty() => {
            assert_eq!(golden.header.phone, p.header.phone, "{id}");
        }
        other => assert!(matches!(other, Message::Unknown(_)), "{id}: {other:?}"),
    }
}

#[test]
fn vector_packets_decode_to_expected_values() {
    let recs = records();
    assert_eq!(recs.len(), 330, "vector file size");
    let (mut decoded, mut refused, mut warned, mut with_body, mut replies) = (0, 0, 0, 0, 0);
    for r in &recs {
        let id = r["id"].as_str().expect("id");
        if NON_PACKET_KINDS.contains(&r["kind"].as_str().expect("kind")) {
            continue;
        }
        let hex = wire_hex(r);
        if let Some((_, kind, why)) = REFUSED.iter().find(|(rid, ..)| *rid == id) {
            // Under Warn, so the reason shown is the one after the check code.
            let policy = if *kind == "check" {
                CrcPolicy::Reject
            } else {
                CrcPolicy::Warn
            };
            let err = one(&hex, policy).expect_err(why);
            assert_eq!(err.kind(), *kind, "{id}: {why}");
            refused += 1;
            continue;
        }
        let p = one(&hex, CrcPolicy::Warn).unwrap_or_else(|e| panic!("{id}: {e}"));
        let expects_ok = r["checks"]["checksum_ok"] == true;
        assert_eq!(p.check_ok, expects_ok, "{id} check code");
        if expects_ok {
            assert!(one(&hex, CrcPolicy::Reject).is_ok(), "{id} under Reject");
        } else {
            assert!(
                CHECK_FAILS_ACCEPTED_UNDER_WARN.contains(&id),
                "{id} unlisted XOR failure"
            );
            assert_eq!(
                one(&hex, CrcPolicy::Reject).map(|_| ()).unwrap_err().kind(),
                "check"
            );
            warned += 1;
        }
        check_header(id, &p.header, &r["derived"]["header"]);
        assert!(
            !matches!(p.message, Message::Invalid { .. }),
            "{id}: {:?}",
            p.message
        );
        if let Some(b) = r["derived"].get("body") {
            check_body(id, &p.message, b);
            with_body += 1;
        }
        // For the version-bit quirk the derived reply copies the bit onto a 2013 header,
        // which no terminal can parse; ours answers in the layout the terminal used.
        if let Some(reply) = r["derived"]["reply_derived"]
            .as_str()
            .filter(|_| !p.header.version_flag_mismatch)
        {
            assert_eq!(
                hex::encode(encode_general_response(&p.header, 0, 0)),
                reply,
                "{id}"
            );
            replies += 1;
        }
        if let Some(reply) = r["expect"]["reply"].as_str() {
            check_reply(id, &p, reply);
            replies += 1;
        }
        decoded += 1;
    }
    assert_eq!(refused, REFUSED.len(), "every refused frame is in the file");
    assert_eq!(
        warned,
        CHECK_FAILS_ACCEPTED_UNDER_WARN.len(),
        "every listed XOR failure seen"
    );
    let non_packet = recs
        .iter()
        .filter(|r| NON_PACKET_KINDS.contains(&r["kind"].as_str().unwrap_or("")))
        .count();
    assert_eq!(
        decoded + refused + non_packet,
        330,
        "every record accounted for"
    );
    assert_eq!(decoded, 270);
    assert_eq!(refused, 20);
    assert!(with_body > 150, "{with_body} bodies compared");
    assert!(replies > 130, "{replies} replies compared");
}

/// Cuts every frame from a byte stream the way a connection does.
fn cut_all(bytes: &[u8]) -> (Vec<Vec<u8>>, usize, Option<DecodeError>) {
    let mut at = 0;
    let mut frames = Vec::new();
    loop {
        match next_frame(&bytes[at..]) {
            Ok(Some(raw)) => {
                let start = at + raw.skipped;
                frames.push(bytes[start..at + raw.consumed].to_vec());
                at += raw.consumed;
            }
            Ok(None) => return (frames, bytes.len() - at, None),
            Err(e) => return (frames, bytes.len() - at, Some(e)),
        }
    }
}

#[test]
fn vector_streams_and_escaping() {
    let mut seen = 0;
    for r in records() {
        let kind = r["kind"].as_str().expect("kind");
        if !NON_PACKET_KINDS.contains(&kind) {
            continue;
        }
        seen += 1;
        let id = r["id"].as_str().expect("id");
        let bytes = unhex(r["hex"].as_str().expect("hex"));
        let e = &r["expect"];
        if let Some(inner) = e["unescaped_inner_hex"].as_str() {
            let raw = next_frame(&bytes).expect("cut").expect("complete");
            let un = frame::unescape(raw.inner).expect("unescapes");
            assert_eq!(hex::encode(&*un), inner, "{id}");
        } else if let Some(input) = e["escaper_input_hex"].as_str() {
            // traccar's escaper input keeps its flags; go-jt808's does not.
            let input = unhex(input);
            let inner = match input.as_slice() {
                [0x7e, inner @ .., 0x7e] => inner,
                all => all,
            };
            let mut out = Vec::new();
            frame::wrap(inner, &mut out);
            assert_eq!(
                hex::encode(out),
                e["escaped_output_hex"].as_str().expect("out"),
                "{id}"
            );
        } else if let Some(out) = e["framer_output_hex"].as_str() {
            // traccar's framer output is de-escaped with flags kept.
            let raw = next_frame(&bytes).expect("cut").expect("complete");
            let mut got = vec![0x7e];
            got.extend_from_slice(&frame::unescape(raw.inner).expect("unescapes"));
            got.push(0x7e);
            assert_eq!(hex::encode(got), out, "{id}");
        } else if kind == "escaping" {
            // 7d followed by neither 01 nor 02 (escape-03), or a frame never closed (-04).
            match next_frame(&bytes) {
                Ok(Some(raw)) => assert_eq!(
                    frame::unescape(raw.inner).map(|_| ()).unwrap_err().kind(),
                    "bad_escape",
                    "{id}"
                ),
                other => assert_eq!(other, Ok(None), "{id}: open frame needs more"),
            }
        } else if let Some(frames) = e["frames"].as_array() {
            let (got, pending, err) = cut_all(&bytes);
            assert!(err.is_none(), "{id}");
            let want: Vec<&str> = frames.iter().map(|f| f.as_str().expect("frame")).collect();
            let got: Vec<String> = got.iter().map(hex::encode).collect();
            assert_eq!(got, want, "{id}");
            // Bytes after the last frame stay pending unless they are garbage that a
            // later flag will skip; the peer's pending count includes those too.
            if let Some(p) = e["pending_bytes"].as_u64() {
                assert_eq!(pending as u64, p, "{id} pending");
            }
        } else if kind == "stream" {
            // Count-only go-jt808 streams: our framer cuts the frames; a frame whose header
            // is too short for its own check code fails in decode_frame, not in the framer.
            let (got, _, err) = cut_all(&bytes);
            assert!(err.is_none(), "{id}");
            let good = got
                .iter()
                .filter(|f| decode(f, CrcPolicy::Reject).is_ok())
                .count();
            // go-jt808 stops at a bad frame; we resynchronise on the next flag, so a good
            // frame after a bad one still decodes.
            let resync = if id == "jt808-go-stream-13" { 1 } else { 0 };
            assert_eq!(
                good as u64,
                u(&e["frame_count"]) + resync,
                "{id} decodable frames"
            );
            if e["decode_error_expected"] == true {
                assert!(got.len() > good, "{id}: a frame fails to decode");
            }
        } else if kind == "invalid" {
            match decode(&bytes, CrcPolicy::Reject) {
                Ok(None) => assert_eq!(id, "jt808-go-decode-06", "only the cut-off input waits"),
                Ok(Some(d)) => panic!("{id} decoded {d:?}"),
                Err(e) => assert!(["short", "body_length"].contains(&e.kind()), "{id}: {e}"),
            }
        } else {
            // ASCII `(...)` frames share traccar's port; they are not JT/T 808.
            assert_eq!(kind, "text_frame", "{id}");
            assert_eq!(
                decode(&bytes, CrcPolicy::Reject),
                Ok(None),
                "{id}: no flag, waits"
            );
        }
    }
    assert_eq!(seen, 40, "non-packet records");
}

#[test]
fn subpackaged_vectors_reassemble() {
    let recs = records();
    let groups: &[(&str, usize, usize)] =
        &[("jt808-go-subpkg-", 6, 5046), ("jt808-smallchi-", 10, 6971)];
    for (prefix, count, len) in groups {
        let mut r = Reassembler::new(Limits::default());
        let now = Utc
            .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("time");
        let mut done = None;
        let mut pushed = 0;
        for rec in &recs {
            let id = rec["id"].as_str().expect("id");
            if !id.starts_with(prefix)
                || rec["derived"]["header"]["package_total"].as_u64() != Some(*count as u64)
            {
                continue;
            }
            let p = one(&wire_hex(rec), CrcPolicy::Warn).expect("package decodes");
            let Message::Fragment(body) = &p.message else {
                panic!("{id} fragment")
            };
            pushed += 1;
            if let Some(whole) = r.push(&p.header, body, now).expect("accepted") {
                done = Some(whole);
            }
        }
        assert_eq!(pushed, *count, "{prefix} packages");
        let whole = done.expect("complete");
        assert_eq!(whole.body.len(), *len, "{prefix} length");
        assert_eq!(r.in_progress(), 0);
        let m = decode_body(&whole.header, &whole.body);
        match m {
            Message::ResourceList(l) => assert_eq!(l.items.len() * 28 + 6, *len),
            Message::MediaData(md) => {
                assert_eq!(&md.data[..2], &[0xFF, 0xD8], "JPEG start");
                assert_eq!(&md.data[md.data.len() - 2..], &[0xFF, 0xD9], "JPEG end");
            }
            other => panic!("{prefix}: {other:?}"),
        }
    }
}

fn hdr(msg_id: u16, serial: u16, package: Option<Package>) -> Header {
    Header {
        msg_id,
        version: None,
        phone: Phone::from_digits("12345678901", false).expect("phone"),
        serial,
        package,
        version_flag_mismatch: false,
    }
}

#[test]
fn subpackage_loss_is_reported_then_expires() {
    let limits = Limits::default();
    let mut r = Reassembler::new(limits);
    let t0 = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    for index in [1u16, 3] {
        let h = hdr(0x0801, 100 + index, Some(Package { total: 4, index }));
        assert_eq!(r.push(&h, &[index as u8; 10], t0), Ok(None));
    }
    assert_eq!(r.missing(0x0801, 4), Some(vec![2, 4]));
    assert!(
        r.poll(t0 + Duration::seconds(5)).is_empty(),
        "not quiet long enough"
    );
    let gaps = r.poll(t0 + limits.resend_after);
    assert_eq!(gaps.len(), 1);
    assert_eq!(gaps[0].missing, vec![2, 4]);
    assert_eq!(gaps[0].header.serial, 101, "original serial for 0x8003");
    assert!(!gaps[0].expired);
    assert!(
        r.poll(t0 + limits.resend_after + Duration::seconds(1))
            .is_empty(),
        "reported once"
    );
    let gaps = r.poll(t0 + limits.timeout);
    assert!(gaps[0].expired);
    assert_eq!(r.in_progress(), 0, "dropped after the timeout");
}

#[test]
fn subpackage_limits_hold() {
    let limits = Limits {
        max_packages: 8,
        max_bytes: 20,
        max_concurrent: 2,
        ..Limits::default()
    };
    let mut r = Reassembler::new(limits);
    let now = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("time");
    let p = |total, index| Some(Package { total, index });
    assert_eq!(
        r.push(&hdr(1, 0, p(9, 1)), &[0], now).unwrap_err().kind(),
        "too_many_packages"
    );
    assert_eq!(
        r.push(&hdr(1, 0, p(2, 3)), &[0], now).unwrap_err().kind(),
        "bad_index"
    );
    assert_eq!(
        r.push(&hdr(1, 0, p(2, 0)), &[0], now).unwrap_err().kind(),
        "bad_index"
    );
    assert_eq!(r.push(&hdr(1, 0, p(2, 1)), &[0; 15], now), Ok(None));
    assert_eq!(
        r.push(&hdr(1, 1, p(2, 2)), &[0; 6], now)
            .unwrap_err()
            .kind(),
        "too_large"
    );
    assert_eq!(r.in_progress(), 0, "an oversized message is dropped");
    assert_eq!(r.push(&hdr(1, 0, p(2, 1)), &[0], now), Ok(None));
    assert_eq!(r.push(&hdr(2, 0, p(2, 1)), &[0], now), Ok(None));
    assert_eq!(
        r.push(&hdr(3, 0, p(2, 1)), &[0], now).unwrap_err().kind(),
        "too_many_concurrent"
    );
    // A duplicate keeps the first copy; the message completes in index order.
    assert_eq!(r.push(&hdr(1, 0, p(2, 1)), &[9], now), Ok(None));
    let done = r
        .push(&hdr(1, 1, p(2, 2)), &[2], now)
        .expect("ok")
        .expect("complete");
    assert_eq!(done.body, vec![0, 2]);
    assert_eq!(done.header.package, None);
}

#[test]
fn escaping_edge_cases() {
    // A 7d at the end of the buffer: the frame is still open, need more.
    assert_eq!(next_frame(&unhex("7e0002007d")), Ok(None));
    // 7d followed by a byte other than 01/02 is an invalid escape.
    let bad = unhex("7e00027d037e");
    let raw = next_frame(&bad).expect("cut").expect("frame");
    assert_eq!(frame::unescape(raw.inner).unwrap_err().kind(), "bad_escape");
    // A raw 7d check code right before the closing flag is taken literally (go-jt808).
    let p = one("7e0002000000000000067900007d7e", CrcPolicy::Reject).expect("heartbeat");
    assert_eq!(p.message, Message::Heartbeat);
    // 7e and 7d inside the body and as check code survive escaping both ways.
    let h = hdr(0x0900, 0x7e7d, None);
    let m = Message::Transparent {
        kind: 0x7e,
        data: vec![0x7d, 0x7e, 0x7d, 0x01, 0x02],
    };
    let bytes = encode(&h, &m).expect("encodes");
    assert_eq!(
        bytes.iter().filter(|&&b| b == 0x7e).count(),
        2,
        "only the flags are 7e"
    );
    let back = decode(&bytes, CrcPolicy::Reject)
        .expect("ok")
        .expect("complete");
    assert_eq!(back.packet.message, m);
    assert_eq!(back.packet.header.serial, 0x7e7d);
    // Escaped check code at the end (…7d02 7e): go-jt808's heartbeat sample.
    let p = one("7e000200000123456789017fff0a7e", CrcPolicy::Reject).expect("heartbeat");
    assert_eq!(p.message, Message::Heartbeat);
}

#[test]
fn bad_check_code_policy() {
    // J3 with the check code changed from 6c to 6d.
    let hex = "7e0200002612345678901200010000000100000002\
00ba7f0e07e4f11c0028003c00001810151010100104000000640202007d016d7e";
    assert_eq!(
        one(hex, CrcPolicy::Reject),
        Err(DecodeError::Check {
            got: 0x6d,
            expected: 0x6c
        })
    );
    let p = one(hex, CrcPolicy::Warn).expect("accepted under Warn");
    assert!(!p.check_ok);
    let Message::Location(l) = p.message else {
        panic!("location")
    };
    assert_eq!(
        l.item(0x02),
        Some(&LocationItem::Fuel(125)),
        "fuel from the escaped 7d01"
    );
}

#[test]
fn truncated_and_oversized_frames() {
    let full = unhex("7e000200000123456789017fff0a7e");
    for n in 0..full.len() {
        assert_eq!(
            decode(&full[..n], CrcPolicy::Reject),
            Ok(None),
            "prefix of {n} bytes"
        );
    }
    // An open frame longer than MAX_FRAME_LEN is refused without waiting for its end.
    let mut long = vec![0x7e];
    long.extend(std::iter::repeat_n(0x11, MAX_FRAME_LEN));
    assert_eq!(next_frame(&long).unwrap_err().kind(), "too_long");
    // Garbage beyond MAX_GARBAGE with no flag closes the stream; less is skipped and counted.
    assert_eq!(
        next_frame(&vec![0x24; MAX_GARBAGE + 1]).unwrap_err().kind(),
        "no_flag"
    );
    assert_eq!(next_frame(&[0x24; 10]), Ok(None));
    let mut g = vec![0x24, 0x24];
    g.extend_from_slice(&full);
    let d = decode(&g, CrcPolicy::Reject).expect("ok").expect("frame");
    assert_eq!((d.skipped, d.consumed), (2, g.len()));
    // A declared body length that fits neither layout.
    assert_eq!(
        one("7e0200000512345678901200010000007e", CrcPolicy::Warn)
            .unwrap_err()
            .kind(),
        "body_length"
    );
    // Encrypted: refused with the reason.
    let e = one("7e0200040012345678901200010f7e", CrcPolicy::Warn).unwrap_err();
    assert_eq!(
        e,
        DecodeError::Encrypted {
            msg_id: 0x0200,
            mode: 1
        }
    );
}

#[test]
fn golden_9101_live_request() {
    // J5 (go-jt808 0x9101 sample): encode from typed values, compare bytes.
    let h = hdr(0x9101, 1, None);
    let h = Header {
        phone: Phone::from_digits("123456789012", false).expect("phone"),
        ..h
    };
    let m = Message::LiveRequest(LiveRequest {
        server: "123.123.123.123".into(),
        tcp_port: 772,
        udp_port: 16582,
        channel: 12,
        data_type: 1,
        stream: 0,
    });
    assert_eq!(
        hex::encode(encode(&h, &m).expect("encodes")),
        "7e9101001712345678901200010f3132332e3132332e3132332e313233030440c60c0100a17e"
    );
}

#[test]
fn golden_8001_reply_2019_auth() {
    // J2 and its go-jt808 reply.
    let p = one(
        "7e0102402f010000000001729984173800000b3137323939383431373338313233343536373839303132333435332e372e31350000000000000000000000000000227e",
        CrcPolicy::Reject,
    )
    .expect("auth");
    assert_eq!(
        hex::encode(encode_general_response(&p.header, 0, 0)),
        "7e8001400501000000000172998417380000000001020087 7e".replace(' ', "")
    );
}

#[test]
fn su_biao_adas_label() {
    // traccar JC371 sample (check code edited by the peer; accepted under Warn).
    let rec = records()
        .into_iter()
        .find(|r| r["id"] == "jt808-traccar-dec-109")
        .expect("record");
    let p = one(&wire_hex(&rec), CrcPolicy::Warn).expect("decodes");
    let Message::Location(l) = p.message else {
        panic!("location")
    };
    let Some(LocationItem::Adas(a)) = l.item(0x64) else {
        panic!("adas item")
    };
    assert_eq!(a.alarm_id, 11);
    assert_eq!(a.kind, 4, "pedestrian collision");
    assert_eq!(a.common.speed_kmh, 42);
    assert_eq!(a.common.label.terminal_id_str(), "0074242");
    assert_eq!(
        a.common.label.time.naive(),
        NaiveDate::from_ymd_opt(2026, 3, 27).and_then(|d| d.and_hms_opt(15, 52, 45))
    );
    assert_eq!((a.common.label.seq, a.common.label.attachments), (11, 5));
    assert_eq!(
        phone_to_imei(&p.header.phone.digits(), true).map(|i| i.to_string()),
        Some("865478070074259".into())
    );
}

#[test]
fn bcd_time_to_utc() {
    let t = BcdTime([0x18, 0x10, 0x15, 0x10, 0x10, 0x10]);
    assert_eq!(
        t.to_utc(),
        Utc.with_ymd_and_hms(2018, 10, 15, 2, 10, 10).single()
    );
    assert_eq!(BcdTime([0; 6]).naive(), None, "all-zero time is not a date");
    assert_eq!(BcdTime([0x1a, 1, 1, 0, 0, 0]).naive(), None, "non-BCD");
}

#[test]
fn imei_rules() {
    assert_eq!(
        phone_to_imei("4f0ebc392d30", true).map(|i| i.to_string()),
        Some("869247060001762".into())
    );
    assert_eq!(
        phone_to_imei("013912345678", false).map(|i| i.to_string()),
        Some("13912345678".into())
    );
    assert_eq!(
        phone_to_imei("00000000017299841738", false).map(|i| i.to_string()),
        Some("17299841738".into())
    );
    assert_eq!(
        phone_to_imei("4eb6fb4af2c1", false),
        None,
        "hex phone under the old rule"
    );
    assert_eq!(
        phone_to_imei("ffffffffffff", true),
        None,
        "more than 14 digits"
    );
    let imei = crate::imei::Imei::parse("869247060001762").expect("imei");
    assert_eq!(imei_to_phone(&imei, true).as_deref(), Some("4f0ebc392d30"));
    let bad = crate::imei::Imei::parse("869247060001763").expect("imei");
    assert_eq!(imei_to_phone(&bad, true), None, "wrong Luhn digit");
}

proptest! {
    #[test]
    fn new_rule_imei_round_trip(first14 in 0u64..100_000_000_000_000) {
        let digits = format!("{first14:014}");
        let imei = crate::imei::Imei::parse(&format!("{digits}{}", crate::imei::luhn_digit(&digits))).expect("imei");
        let phone = imei_to_phone(&imei, true).expect("phone");
        prop_assert_eq!(phone_to_imei(&phone, true), Some(imei));
        prop_assert_eq!(phone_to_imei(&phone, true).and_then(|i| imei_to_phone(&i, true)), Some(phone));
    }

    #[test]
    fn old_rule_imei_round_trip(n in 1u64..1_000_000_000_000) {
        let imei = crate::imei::Imei::parse(&n.to_string()).expect("id");
        let phone = imei_to_phone(&imei, false).expect("phone");
        prop_assert_eq!(phone.len(), 12);
        prop_assert_eq!(phone_to_imei(&phone, false), Some(imei));
    }

    #[test]
    fn frames_round_trip(m in arb_message(), v2019 in any::<bool>(), serial in any::<u16>()) {
        let mut h = hdr(msg_id(&m), serial, None);
        if v2019 {
            h.version = Some(1);
            h.phone = Phone::from_digits("12345678901234567890", true).expect("phone");
        }
        let m = adapt(m, v2019);
        let bytes = encode(&h, &m).expect("encodes");
        let d = decode(&bytes, CrcPolicy::Reject).expect("decodes").expect("complete");
        prop_assert_eq!(d.consumed, bytes.len());
        prop_assert_eq!(d.packet.header, h);
        prop_assert_eq!(d.packet.message, m);
    }

    #[test]
    fn split_frames_reassemble(data in proptest::collection::vec(any::<u8>(), 0..3000), max in 2usize..1100) {
        let h = hdr(0x0900, 7, None);
        let m = Message::Transparent { kind: 0x41, data };
        let frames = encode_split(&h, &m, max).expect("encodes");
        let mut r = Reassembler::new(Limits::default());
        let now = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).single().expect("time");
        let mut out = None;
        for f in &frames {
            let p = decode(f, CrcPolicy::Reject).expect("ok").expect("frame").packet;
            let body = match &p.message { Message::Fragment(b) => b.clone(), other => encode_body(false, other).expect("body") };
            out = r.push(&p.header, &body, now).expect("accepted");
        }
        let whole = out.expect("complete");
        prop_assert_eq!(whole.header.serial, 7);
        prop_assert_eq!(decode_body(&whole.header, &whole.body), m);
    }

    #[test]
    fn stream_cutting_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let (frames, pending, _) = cut_all(&data);
        prop_assert!(pending <= data.len());
        for f in frames {
            prop_assert!(f.len() <= MAX_FRAME_LEN);
            let _ = decode(&f, CrcPolicy::Warn);
        }
    }
}

fn msg_id(m: &Message) -> u16 {
    match m {
        Message::TerminalResponse(_) => 0x0001,
        Message::Heartbeat => 0x0002,
        Message::Logout => 0x0003,
        Message::Register(_) => 0x0100,
        Message::Auth(_) => 0x0102,
        Message::ParamsReply(_) => 0x0104,
        Message::Attributes(_) => 0x0107,
        Message::Location(_) => 0x0200,
        Message::LocationReply { .. } => 0x0201,
        Message::BatchLocation(_) => 0x0704,
        Message::MediaEvent(_) => 0x0800,
        Message::MediaData(_) => 0x0801,
        Message::Transparent { .. } => 0x0900,
        Message::AvAttributes(_) => 0x1003,
        Message::PassengerFlow(_) => 0x1005,
        Message::ResourceList(_) => 0x1205,
        Message::FileUploadResult { .. } => 0x1206,
        Message::PlatformResponse(_) => 0x8001,
        Message::ResendRequest(_) => 0x8003,
        Message::RegisterResponse(_) => 0x8100,
        Message::SetParams(_) => 0x8103,
        Message::QueryAllParams => 0x8104,
        Message::TerminalControl { .. } => 0x8105,
        Message::QueryParams(_) => 0x8106,
        Message::QueryAttributes => 0x8107,
        Message::LocationQuery => 0x8201,
        Message::Text(_) => 0x8300,
        Message::CameraShoot(_) => 0x8801,
        Message::QueryAvAttributes => 0x9003,
        Message::LiveRequest(_) => 0x9101,
        Message::LiveControl(_) => 0x9102,
        Message::PlaybackRequest(_) => 0x9201,
        Message::PlaybackControl(_) => 0x9202,
        Message::ResourceQuery(_) => 0x9205,
        Message::FileUpload(_) => 0x9206,
        Message::FileUploadControl { .. } => 0x9207,
        Message::AttachmentUpload(_) => 0x9208,
        Message::Fragment(_) | Message::Unknown(_) | Message::Invalid { .. } => 0xFFFF,
    }
}

/// Fixes the fields whose presence depends on the layout.
fn adapt(m: Message, v2019: bool) -> Message {
    match m {
        Message::Register(mut r) => {
            r.layout = if v2019 {
                RegisterLayout::V2019
            } else if r.layout == RegisterLayout::V2019 {
                RegisterLayout::V2013
            } else {
                r.layout
            };
            if r.layout == RegisterLayout::V2011 {
                r.plate = r.plate.chars().take(3).collect();
            }
            Message::Register(r)
        }
        Message::Auth(mut a) => {
            if !v2019 {
                a.imei = None;
                a.software_version = None;
            } else {
                a.imei = Some(a.imei.unwrap_or_default());
                a.software_version = Some(a.software_version.unwrap_or_default());
            }
            Message::Auth(a)
        }
        Message::Text(mut t) => {
            t.text_type = if v2019 {
                Some(t.text_type.unwrap_or(2))
            } else {
                None
            };
            Message::Text(t)
        }
        other => other,
    }
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9 .:;测试粤京]{{0,{max}}}")).expect("regex")
}
fn ascii(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Z0-9]{{0,{max}}}")).expect("regex")
}
fn time() -> impl Strategy<Value = BcdTime> {
    any::<[u8; 6]>().prop_map(BcdTime)
}

fn arb_basic() -> impl Strategy<Value = BasicLocation> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u16>(),
        any::<u16>(),
        0u16..360,
        time(),
    )
        .prop_map(|(a, s, la, lo, al, sp, c, t)| BasicLocation {
            alarm: AlarmFlags(a),
            status: StatusFlags(s),
            latitude_e6: la,
            longitude_e6: lo,
            altitude_m: al,
            speed_dkmh: sp,
            course: c,
            time: t,
        })
}

fn arb_label() -> impl Strategy<Value = AlarmLabel> {
    (
        any::<[u8; 7]>(),
        time(),
        any::<u8>(),
        any::<u8>(),
        any::<u8>(),
    )
        .prop_map(|(id, t, s, a, r)| AlarmLabel {
            terminal_id: id,
            time: t,
            seq: s,
            attachments: a,
            reserved: r,
        })
}

fn arb_common() -> impl Strategy<Value = SafetyCommon> {
    (
        any::<u8>(),
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
        time(),
        any::<u16>(),
        arb_label(),
    )
        .prop_map(|(sp, al, la, lo, t, vs, l)| SafetyCommon {
            speed_kmh: sp,
            altitude_m: al,
            latitude_e6: la,
            longitude_e6: lo,
            time: t,
            vehicle_status: vs,
            label: l,
        })
}

fn arb_item() -> impl Strategy<Value = LocationItem> {
    use LocationItem as I;
    prop_oneof![
        any::<u32>().prop_map(I::Mileage),
        any::<u16>().prop_map(I::Fuel),
        any::<u16>().prop_map(I::RecorderSpeed),
        any::<u16>().prop_map(I::AlarmEventId),
        proptest::collection::vec(any::<u8>(), 30).prop_map(I::TyrePressure),
        any::<i16>().prop_map(I::CompartmentTemperature),
        (any::<u8>(), proptest::option::of(any::<u32>())).prop_map(|(t, a)| I::Overspeed {
            location_type: t,
            area_id: a
        }),
        (any::<u8>(), any::<u32>(), any::<u8>()).prop_map(|(t, a, d)| I::AreaAlarm {
            location_type: t,
            area_id: a,
            direction: d
        }),
        (any::<u32>(), any::<u16>(), any::<u8>()).prop_map(|(s, t, r)| I::SectionTime {
            section_id: s,
            seconds: t,
            result: r
        }),
        any::<u32>().prop_map(I::VideoAlarms),
        any::<u32>().prop_map(I::VideoSignalLoss),
        any::<u32>().prop_map(I::VideoOcclusion),
        any::<u16>().prop_map(I::StorageFault),
        (any::<u16>(), any::<u8>()).prop_map(|(b, f)| I::AbnormalDriving {
            behaviour: b,
            fatigue: f
        }),
        any::<u32>().prop_map(I::ExtendedSignals),
        any::<u16>().prop_map(I::IoStatus),
        any::<u32>().prop_map(I::Analog),
        any::<u8>().prop_map(I::Signal),
        any::<u8>().prop_map(I::Satellites),
        (any::<u32>(), any::<[u8; 8]>(), arb_common()).prop_map(|(id, b, c)| I::Adas(AdasAlarm {
            alarm_id: id,
            flag: b[0],
            kind: b[1],
            level: b[2],
            front_speed_kmh: b[3],
            front_distance: b[4],
            departure: b[5],
            road_sign_type: b[6],
            road_sign_value: b[7],
            common: c,
        })),
        (any::<u32>(), any::<[u8; 8]>(), arb_common()).prop_map(|(id, b, c)| I::Dsm(DsmAlarm {
            alarm_id: id,
            flag: b[0],
            kind: b[1],
            level: b[2],
            fatigue: b[3],
            reserved: [b[4], b[5], b[6], b[7]],
            common: c,
        })),
        (
            any::<u32>(),
            any::<u8>(),
            arb_common(),
            proptest::collection::vec(
                any::<[u16; 4]>().prop_map(|w| TyreAlarm {
                    position: w[0] as u8,
                    alarms: w[0],
                    pressure: w[1],
                    temperature: w[2],
                    battery: w[3],
                }),
                0..5
            )
        )
            .prop_map(|(id, f, c, t)| I::Tpms(TpmsAlarm {
                alarm_id: id,
                flag: f,
                common: c,
                tyres: t
            })),
        (any::<u32>(), any::<u8>(), any::<u8>(), arb_common()).prop_map(|(id, f, k, c)| I::Bsd(
            BsdAlarm {
                alarm_id: id,
                flag: f,
                kind: k,
                common: c
            }
        )),
        (0xE1u8..=0xFF, proptest::collection::vec(any::<u8>(), 0..20))
            .prop_map(|(id, value)| I::Raw { id, value }),
    ]
}

fn arb_location() -> impl Strategy<Value = Location> {
    (arb_basic(), proptest::collection::vec(arb_item(), 0..4)).prop_map(|(basic, items)| Location {
        basic,
        items,
        trailing: Vec::new(),
    })
}

fn arb_param() -> impl Strategy<Value = Param> {
    prop_oneof![
        any::<u32>().prop_map(|v| Param {
            id: 0x0001,
            value: ParamValue::Dword(v)
        }),
        any::<u16>().prop_map(|v| Param {
            id: 0x0031,
            value: ParamValue::Word(v)
        }),
        any::<u8>().prop_map(|v| Param {
            id: 0x0084,
            value: ParamValue::Byte(v)
        }),
        text(20).prop_map(|v| Param {
            id: 0x0013,
            value: ParamValue::Text(v)
        }),
        proptest::collection::vec(any::<u8>(), 0..10).prop_map(|v| Param {
            id: 0xF364,
            value: ParamValue::Bytes(v)
        }),
    ]
}

fn arb_message() -> impl Strategy<Value = Message> {
    let general = (any::<u16>(), any::<u16>(), any::<u8>()).prop_map(|(s, i, r)| GeneralResponse {
        reply_serial: s,
        reply_id: i,
        result: r,
    });
    prop_oneof![
        general.clone().prop_map(Message::TerminalResponse),
        general.prop_map(Message::PlatformResponse),
        Just(Message::Heartbeat),
        Just(Message::Logout),
        Just(Message::QueryAllParams),
        Just(Message::QueryAttributes),
        Just(Message::LocationQuery),
        Just(Message::QueryAvAttributes),
        (
            prop_oneof![Just(RegisterLayout::V2011), Just(RegisterLayout::V2013)],
            any::<u16>(),
            any::<u16>(),
            ascii(5),
            ascii(8),
            ascii(7),
            any::<u8>(),
            text(8)
        )
            .prop_map(
                |(layout, province, city, manufacturer, model, terminal_id, plate_color, plate)| {
                    Message::Register(Register {
                        layout,
                        province,
                        city,
                        manufacturer,
                        model,
                        terminal_id,
                        plate_color,
                        plate,
                    })
                }
            ),
        (
            ascii(30),
            proptest::option::of(ascii(15)),
            proptest::option::of(ascii(20))
        )
            .prop_map(|(auth_code, imei, software_version)| Message::Auth(Auth {
                auth_code,
                imei,
                software_version
            })),
        (any::<u16>(), proptest::collection::vec(arb_param(), 0..6)).prop_map(
            |(reply_serial, params)| Message::ParamsReply(ParamsReply {
                reply_serial,
                params
            })
        ),
        proptest::collection::vec(arb_param(), 0..6).prop_map(Message::SetParams),
        arb_location().prop_map(Message::Location),
        (any::<u16>(), arb_location()).prop_map(|(reply_serial, location)| {
            Message::LocationReply {
                reply_serial,
                location,
            }
        }),
        (0u8..2, proptest::collection::vec(arb_location(), 0..4))
            .prop_map(|(kind, items)| Message::BatchLocation(BatchLocation { kind, items })),
        any::<(u32, [u8; 4])>().prop_map(|(id, b)| Message::MediaEvent(MediaEvent {
            media_id: id,
            media_type: b[0],
            format: b[1],
            event: b[2],
            channel: b[3]
        })),
        (
            any::<(u32, [u8; 4])>(),
            arb_basic(),
            proptest::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|((id, b), location, data)| Message::MediaData(MediaData {
                event: MediaEvent {
                    media_id: id,
                    media_type: b[0],
                    format: b[1],
                    event: b[2],
                    channel: b[3]
                },
                location,
                data,
            })),
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..100))
            .prop_map(|(kind, data)| Message::Transparent { kind, data }),
        (any::<[u8; 8]>(), any::<u16>(), any::<bool>()).prop_map(|(b, len, out)| {
            Message::AvAttributes(AvAttributes {
                audio_codec: b[0],
                audio_channels: b[1],
                sample_rate: b[2],
                sample_bits: b[3],
                audio_frame_len: len,
                audio_output: out,
                video_codec: b[4],
                max_audio_channels: b[5],
                max_video_channels: b[6],
            })
        }),
        (time(), time(), any::<u16>(), any::<u16>()).prop_map(
            |(start, end, boarding, alighting)| Message::PassengerFlow(PassengerFlow {
                start,
                end,
                boarding,
                alighting
            })
        ),
        (
            any::<u16>(),
            proptest::collection::vec(
                (
                    any::<u8>(),
                    time(),
                    time(),
                    any::<u64>(),
                    any::<[u8; 3]>(),
                    any::<u32>()
                )
                    .prop_map(|(channel, start, end, alarm, b, size)| AvResource {
                        channel,
                        start,
                        end,
                        alarm,
                        av_type: b[0],
                        stream: b[1],
                        storage: b[2],
                        size,
                    }),
                0..10
            )
        )
            .prop_map(|(reply_serial, items)| Message::ResourceList(ResourceList {
                reply_serial,
                items
            })),
        (any::<u16>(), any::<u8>()).prop_map(|(reply_serial, result)| Message::FileUploadResult {
            reply_serial,
            result
        }),
        (any::<u16>(), proptest::collection::vec(any::<u16>(), 0..50)).prop_map(
            |(original_serial, indexes)| Message::ResendRequest(ResendRequest {
                original_serial,
                indexes
            })
        ),
        (any::<u16>(), 0u8..5, ascii(20)).prop_map(|(reply_serial, result, code)| {
            Message::RegisterResponse(RegisterResponse {
                reply_serial,
                result,
                auth_code: (result == 0).then_some(code),
            })
        }),
        (any::<u8>(), text(40))
            .prop_map(|(command, params)| Message::TerminalControl { command, params }),
        proptest::collection::vec(any::<u32>(), 0..20).prop_map(Message::QueryParams),
        (any::<u8>(), proptest::option::of(any::<u8>()), text(100)).prop_map(
            |(flag, text_type, text)| Message::Text(Text {
                flag,
                text_type,
                text
            })
        ),
        (any::<u8>(), any::<u16>(), any::<u16>(), any::<[u8; 7]>()).prop_map(
            |(channel, command, interval, b)| Message::CameraShoot(CameraShoot {
                channel,
                command,
                interval,
                save: b[0],
                resolution: b[1],
                quality: b[2],
                brightness: b[3],
                contrast: b[4],
                saturation: b[5],
                chroma: b[6],
            })
        ),
        (ascii(40), any::<u16>(), any::<u16>(), any::<[u8; 3]>()).prop_map(
            |(server, tcp_port, udp_port, b)| Message::LiveRequest(LiveRequest {
                server,
                tcp_port,
                udp_port,
                channel: b[0],
                data_type: b[1],
                stream: b[2],
            })
        ),
        any::<[u8; 4]>().prop_map(|b| Message::LiveControl(LiveControl {
            channel: b[0],
            command: b[1],
            close_kind: b[2],
            stream: b[3]
        })),
        (
            ascii(40),
            any::<u16>(),
            any::<u16>(),
            any::<[u8; 6]>(),
            time(),
            time()
        )
            .prop_map(|(server, tcp_port, udp_port, b, start, end)| {
                Message::PlaybackRequest(PlaybackRequest {
                    server,
                    tcp_port,
                    udp_port,
                    channel: b[0],
                    av_type: b[1],
                    stream: b[2],
                    storage: b[3],
                    mode: b[4],
                    speed: b[5],
                    start,
                    end,
                })
            }),
        (any::<[u8; 3]>(), time()).prop_map(|(b, position)| Message::PlaybackControl(
            PlaybackControl {
                channel: b[0],
                control: b[1],
                speed: b[2],
                position
            }
        )),
        (any::<[u8; 4]>(), time(), time(), any::<u64>()).prop_map(|(b, start, end, alarm)| {
            Message::ResourceQuery(ResourceQuery {
                channel: b[0],
                start,
                end,
                alarm,
                av_type: b[1],
                stream: b[2],
                storage: b[3],
            })
        }),
        (
            ascii(30),
            any::<u16>(),
            ascii(10),
            ascii(10),
            ascii(30),
            any::<[u8; 5]>(),
            time(),
            time(),
            any::<u64>()
        )
            .prop_map(
                |(server, port, user, password, path, b, start, end, alarm)| Message::FileUpload(
                    FileUpload {
                        server,
                        port,
                        user,
                        password,
                        path,
                        channel: b[0],
                        start,
                        end,
                        alarm,
                        av_type: b[1],
                        stream: b[2],
                        storage: b[3],
                        conditions: b[4],
                    }
                )
            ),
        (any::<u16>(), any::<u8>()).prop_map(|(reply_serial, control)| {
            Message::FileUploadControl {
                reply_serial,
                control,
            }
        }),
        (
            ascii(30),
            any::<u16>(),
            any::<u16>(),
            arb_label(),
            any::<[u8; 32]>(),
            any::<[u8; 16]>()
        )
            .prop_map(
                |(server, tcp_port, udp_port, label, alarm_number, reserved)| {
                    Message::AttachmentUpload(AttachmentUpload {
                        server,
                        tcp_port,
                        udp_port,
                        label,
                        alarm_number,
                        reserved,
                    })
                }
            ),
        (
            any::<u16>(),
            ascii(5),
            ascii(20),
            ascii(7),
            proptest::collection::vec(0u8..10, 20),
            ascii(10),
            ascii(10),
            any::<u8>(),
            any::<u8>()
        )
            .prop_map(
                |(
                    terminal_type,
                    manufacturer,
                    model,
                    terminal_id,
                    iccid,
                    hardware_version,
                    firmware_version,
                    gnss,
                    comm,
                )| Message::Attributes(Attributes {
                    terminal_type,
                    manufacturer,
                    model,
                    terminal_id,
                    iccid: iccid.iter().map(|d| char::from(b'0' + d)).collect(),
                    hardware_version,
                    firmware_version,
                    gnss,
                    comm,
                })
            ),
    ]
}
