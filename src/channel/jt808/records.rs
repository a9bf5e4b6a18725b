//! JT/T 808 messages turned into Jimi push records (`msgClass` 1).
//!
//! Kept apart from the state machine so each mapping rule can be tested on its own. The
//! protocol-neutral pieces (`Fix`, `gps_record_base`, `alarm_record`) are shared with GT06.
//!
//! Choices made here, where the sources leave room:
//! - Report times are BCD GMT+8 (the standard's convention); a time that does not parse
//!   (all zeros from a terminal without a fix) is replaced by the gateway time.
//! - `/pushgps`: `distance` is odometer item 0x01 in metres, `satelliteNum` item 0x31,
//!   `status` the JT/T 808 status word unchanged, `acc` status bit 0, `altitude` in metres;
//!   the other standard items go to the JT/T fields of [`GpsExtra`]; items the hub does
//!   not map are kept as hex in `undecodedGpsAddInfo`. A batch (0x0704) of kind 1 (blind-area
//!   backfill) is `gpsMode` 1.
//! - `/pushalarm`: a non-zero alarm word is one alarm, `alertType` "256" with
//!   `standardAlarmValue` = the word (one record per report, as the Jimi hub pushes it, not
//!   one per bit). The JT/T 1078 video items each give their own: 0x15 → 257
//!   (`signalDropChannel`), 0x16 → 258 (`signalCoverChannel`), 0x17 → 259
//!   (`storageFaultChannel`), 0x18 → 260 (abnormal driving, `fatigueLevel`); the 0x14 summary
//!   bits 0..=2 and 5 raise the same types when their detail item is absent. Su-biao items:
//!   0x64 ADAS → 264, 0x65 DSM → 265, 0x66 TPMS → 267, 0x67 BSD → 266, each with `alarmType`
//!   (the item's type byte), `alarmId`, `alarmStatus` (1 start, 2 end) and `alarmLabel`
//!   (the 16-byte identification as comma-separated hex, as the Jimi hub writes it).
//! - `/pushhb`: 0x0002 carries nothing, so the record reports the state of the last
//!   location of the connection: `acc` status bit 0, `gpsPos` bit 1, `oilEle` bit 10
//!   (fuel circuit cut), `remoteLock` bit 11 (circuit cut), `powerStatus` 1 unless alarm
//!   bit 8 (main power lost) is set, `gsmSign` item 0x30 (CSQ 0..=31) in 0..=4 bars,
//!   `powerLevel` 0 (JT/T 808 has no battery level).

use chrono::{DateTime, Utc};

use crate::channel::gt06::records::{alarm_record, gps_record_base, login_record, Fix};
use crate::codec::jt808::{
    AlarmFlags, AlarmLabel, BasicLocation, BcdTime, Location, LocationItem, ResourceList,
    SafetyCommon, StatusFlags,
};
use crate::event::{
    jimi_time, AlarmRecord, AlertType, FtpFileUploadRecord, GpsExtra, GpsRecord, HeartbeatRecord,
    LoginRecord, PassThroughRecord, ResourceItem, ResourceListRecord,
};
use crate::imei::Imei;

/// `msgClass` of alarms from JT/T 808 devices.
pub const MSG_CLASS_JT808: u8 = 1;
/// Minutes east of UTC of every JT/T 808 time (the standard's GMT+8 convention).
pub const JT808_ZONE_MINUTES: i16 = 8 * 60;

pub const ALERT_STANDARD: u32 = 256;
pub const ALERT_VIDEO_SIGNAL_LOST: u32 = 257;
pub const ALERT_VIDEO_BLOCKED: u32 = 258;
pub const ALERT_STORAGE_FAULT: u32 = 259;
pub const ALERT_ABNORMAL_DRIVING: u32 = 260;
pub const ALERT_ADAS: u32 = 264;
pub const ALERT_DSM: u32 = 265;
pub const ALERT_BSD: u32 = 266;
pub const ALERT_TPMS: u32 = 267;

/// The time of a JT/T report in UTC, or `now` when the device sent no valid time.
pub fn report_time(time: &BcdTime, now: DateTime<Utc>) -> DateTime<Utc> {
    time.to_utc().unwrap_or(now)
}

/// The position of a basic location block in the units of the push records.
pub fn fix_of(basic: &BasicLocation, satellites: u32, now: DateTime<Utc>) -> Fix {
    Fix {
        time: report_time(&basic.time, now),
        latitude: basic.latitude(),
        longitude: basic.longitude(),
        speed_kmh: basic.speed_kmh(),
        course: u32::from(basic.course),
        satellites,
        positioned: basic.status.positioned(),
    }
}

fn satellites_of(location: &Location) -> u32 {
    match location.item(0x31) {
        Some(LocationItem::Satellites(n)) => u32::from(*n),
        _ => 0,
    }
}

/// `/pushevent` LOGIN or LOGOUT of a JT/T terminal (zone GMT+08:00).
pub fn jt808_login_record(imei: Imei, kind: &str, now: DateTime<Utc>) -> LoginRecord {
    login_record(imei, kind, Some(JT808_ZONE_MINUTES), now)
}

/// The `/pushgps` record of one location (0x0200, 0x0201, or an item of 0x0704).
pub fn gps_record(
    imei: Imei,
    location: &Location,
    reupload: bool,
    now: DateTime<Utc>,
) -> GpsRecord {
    let basic = &location.basic;
    let fix = fix_of(basic, satellites_of(location), now);
    let mut extra = GpsExtra {
        alarm_flag: (basic.alarm.0 != 0).then_some(basic.alarm.0),
        ..GpsExtra::default()
    };
    let mut distance = 0u64;
    let mut undecoded = Vec::new();
    for item in &location.items {
        match item {
            LocationItem::Mileage(v) => distance = u64::from(*v) * 100,
            LocationItem::Fuel(v) => extra.fuel = Some(f64::from(*v) / 10.0),
            LocationItem::RecorderSpeed(v) => extra.recorder_speed = Some(f64::from(*v) / 10.0),
            LocationItem::AlarmEventId(v) => extra.alarm_event_id = Some(*v),
            LocationItem::ExtendedSignals(v) => extra.extended_signals = Some(*v),
            LocationItem::IoStatus(v) => extra.io_status = Some(*v),
            LocationItem::Analog(v) => extra.analog = Some(*v),
            LocationItem::Signal(v) => extra.gsm_sign = Some(*v),
            // Mapped elsewhere: satellites above, alarms to /pushalarm.
            LocationItem::Satellites(_)
            | LocationItem::VideoAlarms(_)
            | LocationItem::VideoSignalLoss(_)
            | LocationItem::VideoOcclusion(_)
            | LocationItem::StorageFault(_)
            | LocationItem::AbnormalDriving { .. }
            | LocationItem::Adas(_)
            | LocationItem::Dsm(_)
            | LocationItem::Tpms(_)
            | LocationItem::Bsd(_) => {}
            LocationItem::Raw { id, value } => {
                undecoded.push(*id);
                undecoded.push(u8::try_from(value.len()).unwrap_or(u8::MAX));
                undecoded.extend_from_slice(value);
            }
            other => {
                // Standard items without a field of their own (tyre pressure, temperature,
                // overspeed and area details): kept, re-encoded, so nothing is lost.
                if let Ok(bytes) = crate::codec::jt808::encode_item(other) {
                    undecoded.extend_from_slice(&bytes);
                }
            }
        }
    }
    if !undecoded.is_empty() {
        extra.undecoded_gps_add_info = Some(hex::encode_upper(&undecoded));
    }
    let acc = basic.status.acc_on();
    GpsRecord {
        gps_mode: u8::from(reupload),
        acc: u8::from(acc),
        altitude: f64::from(basic.altitude_m),
        distance,
        status: u64::from(basic.status.0),
        extra,
        ..gps_record_base(imei, &fix, now)
    }
}

/// The alarm identification as the Jimi hub writes `alarmLabel`: 16 bytes as two-digit
/// uppercase hex, comma-separated (`30,30,30,31,37,36,32,24,02,03,14,34,38,00,01,00`).
pub fn alarm_label_text(label: &AlarmLabel) -> String {
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&label.terminal_id);
    bytes.extend_from_slice(&label.time.0);
    bytes.extend_from_slice(&[label.seq, label.attachments, label.reserved]);
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn jt_alarm(
    imei: Imei,
    alert_type: u32,
    fix: &Fix,
    serial: u16,
    now: DateTime<Utc>,
) -> AlarmRecord {
    let mut record = alarm_record(
        imei,
        MSG_CLASS_JT808,
        AlertType::Text(alert_type.to_string()),
        Some(fix),
        None,
        now,
    );
    record.msg.alarm_serial_no = Some(serial);
    record
}

/// A Su-biao alarm: positioned where its own tail says, when that position is valid.
fn safety_alarm(
    imei: Imei,
    alert_type: u32,
    fix: &Fix,
    serial: u16,
    now: DateTime<Utc>,
    (alarm_id, flag, kind): (u32, u8, u8),
    common: &SafetyCommon,
) -> AlarmRecord {
    let own = Fix {
        time: common.time.to_utc().unwrap_or(fix.time),
        speed_kmh: f64::from(common.speed_kmh),
        ..*fix
    };
    let own = if common.latitude_e6 != 0 || common.longitude_e6 != 0 {
        // The tail carries no hemisphere bits: it shares the report's.
        Fix {
            latitude: f64::from(common.latitude_e6) / 1e6 * fix.latitude.signum(),
            longitude: f64::from(common.longitude_e6) / 1e6 * fix.longitude.signum(),
            ..own
        }
    } else {
        own
    };
    let mut record = jt_alarm(imei, alert_type, &own, serial, now);
    record.msg.alarm_id = Some(alarm_id);
    record.msg.alarm_status = (flag != 0).then_some(flag);
    record.msg.alarm_type = Some(kind);
    record.msg.alarm_label = Some(alarm_label_text(&common.label));
    record
}

/// Most Su-biao alarms (items 0x64..=0x67) one location report yields. The standard carries
/// each item once per report, so four is the most a terminal sends; the rest of a report that
/// repeats them are left out and counted in the last one kept (`omittedAlarms`).
pub const MAX_SAFETY_ALARMS_PER_LOCATION: usize = 8;
/// Most `/pushalarm` records of one location report: the alarm word, one per video alarm
/// type (a report that repeats a video item gets one record whose channel mask is the union
/// of the repeats), and [`MAX_SAFETY_ALARMS_PER_LOCATION`]. With
/// `codec::jt808::MAX_BATCH_LOCATIONS` this bounds the events of one frame, whatever its
/// reassembled size.
pub const MAX_ALARMS_PER_LOCATION: usize = 1 + 4 + MAX_SAFETY_ALARMS_PER_LOCATION;

/// The `/pushalarm` records of one location report: none when it raises no alarm, at most
/// [`MAX_ALARMS_PER_LOCATION`]. `serial` is the serial of the packet that carried it.
pub fn alarm_records(
    imei: Imei,
    location: &Location,
    serial: u16,
    now: DateTime<Utc>,
) -> Vec<AlarmRecord> {
    let basic = &location.basic;
    let fix = fix_of(basic, satellites_of(location), now);
    let mut out: Vec<AlarmRecord> = Vec::new();
    if basic.alarm.0 != 0 {
        let mut r = jt_alarm(imei, ALERT_STANDARD, &fix, serial, now);
        r.msg.standard_alarm_value = Some(basic.alarm.0);
        out.push(r);
    }
    let summary = match location.item(0x14) {
        Some(LocationItem::VideoAlarms(v)) => *v,
        _ => 0,
    };
    let has = |id: u8| location.item(id).is_some();
    // Where the record of each video alarm type is in `out`, once there is one: a repeated
    // item merges into it (the masks are sets of channels, so the union loses nothing).
    let mut video: [Option<usize>; 4] = [None; 4];
    let mut safety_kept = 0usize;
    let mut safety_omitted = 0u32;
    for item in &location.items {
        let video_slot = match item {
            LocationItem::VideoSignalLoss(ch) if *ch != 0 => Some(0),
            LocationItem::VideoOcclusion(ch) if *ch != 0 => Some(1),
            LocationItem::StorageFault(units) if *units != 0 => Some(2),
            LocationItem::AbnormalDriving { behaviour, .. } if *behaviour != 0 => Some(3),
            _ => None,
        };
        if let Some(slot) = video_slot {
            if let Some(at) = video[slot] {
                merge_video_item(&mut out[at], item);
                continue;
            }
            video[slot] = Some(out.len());
        }
        let is_safety = matches!(
            item,
            LocationItem::Adas(_)
                | LocationItem::Dsm(_)
                | LocationItem::Tpms(_)
                | LocationItem::Bsd(_)
        );
        if is_safety {
            if safety_kept == MAX_SAFETY_ALARMS_PER_LOCATION {
                safety_omitted += 1;
                continue;
            }
            safety_kept += 1;
        }
        match item {
            LocationItem::VideoSignalLoss(ch) if *ch != 0 => {
                let mut r = jt_alarm(imei, ALERT_VIDEO_SIGNAL_LOST, &fix, serial, now);
                r.msg.signal_drop_channel = Some(*ch);
                out.push(r);
            }
            LocationItem::VideoOcclusion(ch) if *ch != 0 => {
                let mut r = jt_alarm(imei, ALERT_VIDEO_BLOCKED, &fix, serial, now);
                r.msg.signal_cover_channel = Some(*ch);
                out.push(r);
            }
            LocationItem::StorageFault(units) if *units != 0 => {
                let mut r = jt_alarm(imei, ALERT_STORAGE_FAULT, &fix, serial, now);
                r.msg.storage_fault_channel = Some(*units);
                out.push(r);
            }
            LocationItem::AbnormalDriving { behaviour, fatigue } if *behaviour != 0 => {
                let mut r = jt_alarm(imei, ALERT_ABNORMAL_DRIVING, &fix, serial, now);
                r.msg.alert_value = Some(u64::from(*behaviour));
                r.msg.fatigue_level = Some(*fatigue);
                out.push(r);
            }
            LocationItem::Adas(a) => {
                let mut r = safety_alarm(
                    imei,
                    ALERT_ADAS,
                    &fix,
                    serial,
                    now,
                    (a.alarm_id, a.flag, a.kind),
                    &a.common,
                );
                r.msg.alarm_level = Some(a.level);
                out.push(r);
            }
            LocationItem::Dsm(d) => {
                let mut r = safety_alarm(
                    imei,
                    ALERT_DSM,
                    &fix,
                    serial,
                    now,
                    (d.alarm_id, d.flag, d.kind),
                    &d.common,
                );
                r.msg.alarm_level = Some(d.level);
                r.msg.fatigue_level = Some(d.fatigue);
                out.push(r);
            }
            LocationItem::Tpms(t) => {
                let kind = t.tyres.first().map_or(0, |tyre| {
                    // The lowest alarm bit set on the first tyre: the TPMS alarm type.
                    (0..16u8)
                        .find(|bit| tyre.alarms & (1 << bit) != 0)
                        .unwrap_or(0)
                });
                out.push(safety_alarm(
                    imei,
                    ALERT_TPMS,
                    &fix,
                    serial,
                    now,
                    (t.alarm_id, t.flag, kind),
                    &t.common,
                ));
            }
            LocationItem::Bsd(b) => out.push(safety_alarm(
                imei,
                ALERT_BSD,
                &fix,
                serial,
                now,
                (b.alarm_id, b.flag, b.kind),
                &b.common,
            )),
            _ => {}
        }
    }
    if safety_omitted > 0 {
        let last_safety = out.iter_mut().rev().find(|r| r.msg.alarm_label.is_some());
        if let Some(r) = last_safety {
            r.msg.omitted_alarms = Some(safety_omitted);
        }
    }
    // Summary bits whose detail item is missing still raise their alarm.
    let summary_only = [
        (0, 0x15, ALERT_VIDEO_SIGNAL_LOST),
        (1, 0x16, ALERT_VIDEO_BLOCKED),
        (2, 0x17, ALERT_STORAGE_FAULT),
        (5, 0x18, ALERT_ABNORMAL_DRIVING),
    ];
    for (bit, detail, alert) in summary_only {
        if summary & (1 << bit) != 0 && !has(detail) {
            out.push(jt_alarm(imei, alert, &fix, serial, now));
        }
    }
    out
}

/// Adds a repeat of a video alarm item to the record of its first occurrence.
fn merge_video_item(record: &mut AlarmRecord, item: &LocationItem) {
    let msg = &mut record.msg;
    match item {
        LocationItem::VideoSignalLoss(ch) => {
            msg.signal_drop_channel = Some(msg.signal_drop_channel.unwrap_or(0) | ch);
        }
        LocationItem::VideoOcclusion(ch) => {
            msg.signal_cover_channel = Some(msg.signal_cover_channel.unwrap_or(0) | ch);
        }
        LocationItem::StorageFault(units) => {
            msg.storage_fault_channel = Some(msg.storage_fault_channel.unwrap_or(0) | units);
        }
        LocationItem::AbnormalDriving { behaviour, fatigue } => {
            msg.alert_value = Some(msg.alert_value.unwrap_or(0) | u64::from(*behaviour));
            msg.fatigue_level = Some(msg.fatigue_level.unwrap_or(0).max(*fatigue));
        }
        _ => {}
    }
}

/// The state of a terminal as its last location left it, for `/pushhb`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LastState {
    pub status: StatusFlags,
    pub alarm: AlarmFlags,
    /// Item 0x30, CSQ 0..=31.
    pub signal: Option<u8>,
}

impl LastState {
    pub fn update(&mut self, location: &Location) {
        self.status = location.basic.status;
        self.alarm = location.basic.alarm;
        if let Some(LocationItem::Signal(s)) = location.item(0x30) {
            self.signal = Some(*s);
        }
    }
}

/// CSQ (0..=31, 99 unknown) as 0..=4 bars.
pub fn signal_bars(csq: u8) -> u32 {
    match csq {
        0 | 99.. => 0,
        1..=9 => 1,
        10..=14 => 2,
        15..=19 => 3,
        _ => 4,
    }
}

/// `/pushhb` record of a 0x0002 heartbeat (see the module notes for each field).
pub fn heartbeat_record(imei: Imei, last: &LastState, now: DateTime<Utc>) -> HeartbeatRecord {
    HeartbeatRecord {
        device_imei: imei,
        gate_time: jimi_time(now),
        power_level: 0,
        gsm_sign: last.signal.map_or(0, signal_bars),
        acc: u8::from(last.status.acc_on()),
        oil_ele: u8::from(last.status.has(StatusFlags::FUEL_CUT)),
        gps_pos: u8::from(last.status.positioned()),
        remote_lock: u8::from(last.status.has(StatusFlags::CIRCUIT_CUT)),
        power_status: u8::from(!last.alarm.has(AlarmFlags::POWER_CUT)),
        fortify: 0,
        voltage: None,
    }
}

/// A BCD time as a UTC push time; all-zero or invalid times become an empty string.
fn resource_time(t: &BcdTime) -> String {
    t.to_utc().map(jimi_time).unwrap_or_default()
}

/// `/pushresourcelist` record of a 0x1205 answer.
pub fn resource_list_record(
    imei: Imei,
    list: &ResourceList,
    instruction_id: &str,
    now: DateTime<Utc>,
) -> ResourceListRecord {
    ResourceListRecord {
        imei,
        device_imei: imei,
        gate_time: jimi_time(now),
        total_num: u32::try_from(list.items.len()).unwrap_or(u32::MAX),
        instruction_id: instruction_id.to_string(),
        resource_list: list
            .items
            .iter()
            .map(|r| ResourceItem {
                channel: r.channel,
                begin_time: resource_time(&r.start),
                end_time: resource_time(&r.end),
                alarm_flag: r.alarm,
                resource_type: r.av_type,
                code_type: r.stream,
                storage_type: r.storage,
                file_size: r.size,
            })
            .collect(),
    }
}

/// `/pushftpfileupload` record of a 0x1206 result.
pub fn ftp_upload_record(
    imei: Imei,
    reply_serial: u16,
    result: u8,
    instruction_id: &str,
    now: DateTime<Utc>,
) -> FtpFileUploadRecord {
    FtpFileUploadRecord {
        imei,
        device_imei: imei,
        gate_time: jimi_time(now),
        result,
        instruction_id: instruction_id.to_string(),
        reply_serial,
    }
}

/// `/pushPassThroughData` record of a 0x0900 message.
pub fn pass_through_record(
    imei: Imei,
    kind: u8,
    data: &[u8],
    now: DateTime<Utc>,
) -> PassThroughRecord {
    PassThroughRecord {
        device_imei: imei,
        gate_time: jimi_time(now),
        pass_through_type: kind,
        data: hex::encode_upper(data),
    }
}

#[cfg(test)]
mod bound_tests {
    use chrono::TimeZone;

    use super::*;
    use crate::codec::jt808::{decode, decode_body, Header, Message, Phone, MAX_BATCH_LOCATIONS};
    use crate::codec::CrcPolicy;

    /// Basic location block: alarm word 0, status positioned, 22.985 N 114.010 E, 2020-07-07.
    const BASIC: &str = "000000000000000206eeb6ad02633df7013800030063200707192359";
    /// Item 0x15, video signal lost on channel 1 (mask 0x01).
    const SIGNAL_LOST_CH1: &str = "150400000001";
    /// Item 0x15, video signal lost on channel 3 (mask 0x04).
    const SIGNAL_LOST_CH3: &str = "150400000004";
    /// Item 0x64, ADAS alarm id 11, pedestrian collision, terminal 0074242.
    const ADAS: &str = concat!(
        "642f",
        "0000000b0104010000000000",
        "2a00000000000000000000260327155245",
        "0000",
        "30303734323432260327155245",
        "0b0500"
    );

    fn imei() -> Imei {
        Imei::parse("12345678901").unwrap()
    }

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
    }

    /// A whole 2013 frame of `msg_id` from terminal 012345678901, serial 1: header, body,
    /// check code, escaped, between flags.
    fn frame(msg_id: u16, body_hex: &str) -> Vec<u8> {
        let body = hex::decode(body_hex).unwrap();
        let mut packet = msg_id.to_be_bytes().to_vec();
        packet.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
        packet.extend_from_slice(&hex::decode("0123456789010001").unwrap());
        packet.extend_from_slice(&body);
        let check = packet.iter().fold(0u8, |x, b| x ^ b);
        packet.push(check);
        let mut wire = vec![0x7e];
        for b in packet {
            match b {
                0x7e => wire.extend_from_slice(&[0x7d, 0x02]),
                0x7d => wire.extend_from_slice(&[0x7d, 0x01]),
                b => wire.push(b),
            }
        }
        wire.push(0x7e);
        wire
    }

    fn location_of(wire: &[u8]) -> Location {
        let packet = decode(wire, CrcPolicy::Reject).unwrap().unwrap().packet;
        let Message::Location(location) = packet.message else {
            panic!("not a location: {:?}", packet.message);
        };
        location
    }

    #[test]
    fn repeated_signal_loss_items_give_one_alarm() {
        let body = format!("{BASIC}{}{}", SIGNAL_LOST_CH1.repeat(150), SIGNAL_LOST_CH3);
        let location = location_of(&frame(0x0200, &body));
        assert_eq!(location.items.len(), 151);
        let alarms = alarm_records(imei(), &location, 1, now());
        assert_eq!(alarms.len(), 1);
    }

    #[test]
    fn merged_signal_loss_alarm_reports_every_channel() {
        let body = format!("{BASIC}{}{}", SIGNAL_LOST_CH1.repeat(150), SIGNAL_LOST_CH3);
        let location = location_of(&frame(0x0200, &body));
        let alarms = alarm_records(imei(), &location, 1, now());
        assert_eq!(alarms[0].msg.signal_drop_channel, Some(0x05));
    }

    #[test]
    fn su_biao_alarms_of_one_report_are_bounded() {
        let body = format!("{BASIC}{}", ADAS.repeat(20));
        let location = location_of(&frame(0x0200, &body));
        assert_eq!(location.items.len(), 20);
        let alarms = alarm_records(imei(), &location, 1, now());
        assert_eq!(alarms.len(), MAX_SAFETY_ALARMS_PER_LOCATION);
    }

    #[test]
    fn left_out_su_biao_alarms_are_counted_in_the_last_one_kept() {
        let body = format!("{BASIC}{}", ADAS.repeat(20));
        let location = location_of(&frame(0x0200, &body));
        let alarms = alarm_records(imei(), &location, 1, now());
        let omitted: Vec<_> = alarms.iter().map(|a| a.msg.omitted_alarms).collect();
        let mut expected = vec![None; MAX_SAFETY_ALARMS_PER_LOCATION - 1];
        expected.push(Some(20 - MAX_SAFETY_ALARMS_PER_LOCATION as u32));
        assert_eq!(omitted, expected);
    }

    #[test]
    fn a_report_without_repeats_keeps_every_alarm() {
        let body = format!("{BASIC}{SIGNAL_LOST_CH1}{ADAS}");
        let location = location_of(&frame(0x0200, &body));
        let alarms = alarm_records(imei(), &location, 1, now());
        let types: Vec<_> = alarms.iter().map(|a| a.msg.alert_type.clone()).collect();
        assert_eq!(
            types,
            [AlertType::Text("257".into()), AlertType::Text("264".into())]
        );
    }

    /// The body of a 0x0704 of `n` locations, as a reassembled message would carry it.
    fn batch_body(n: usize) -> Vec<u8> {
        let item = format!("001c{BASIC}");
        let body = format!("{:04x}00{}", n, item.repeat(n));
        hex::decode(body).unwrap()
    }

    fn batch_header() -> Header {
        Header {
            msg_id: 0x0704,
            version: None,
            phone: Phone::from_digits("012345678901", false).unwrap(),
            serial: 1,
            package: None,
            version_flag_mismatch: false,
        }
    }

    #[test]
    fn a_batch_of_the_most_locations_decodes() {
        let message = decode_body(&batch_header(), &batch_body(MAX_BATCH_LOCATIONS));
        let Message::BatchLocation(batch) = message else {
            panic!("not a batch: {message:?}");
        };
        assert_eq!(batch.items.len(), MAX_BATCH_LOCATIONS);
    }

    #[test]
    fn a_batch_of_more_locations_is_invalid() {
        let message = decode_body(&batch_header(), &batch_body(MAX_BATCH_LOCATIONS + 1));
        assert!(matches!(message, Message::Invalid { .. }), "{message:?}");
    }
}
