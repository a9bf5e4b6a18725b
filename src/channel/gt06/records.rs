//! GT06 messages turned into Jimi push records.
//!
//! Kept apart from the state machine so the rules for each record (which bit is `acc`, which
//! time is `gpsTime`, how an alarm byte of 0 is read) can be tested one by one, and so other
//! protocols can reuse the pieces whose shape is the same: [`Fix`], [`gps_record_base`] and
//! [`alarm_record`] know nothing about GT06.
//!
//! Choices made here, where the sources leave room:
//! - Coordinates are rounded to 6 decimals (about 0.1 m), the precision of the Jimi samples.
//! - Fix times of the GT06 types whose time the vendor leaves unspecified (0x10, 0x11, 0x12,
//!   0x16, 0x1A) are read in the time zone the device announced at login, as traccar does;
//!   the 0x22-family and 0x26/0x27 types are documented as UTC and are never shifted.
//! - An alarm frame whose alarm byte is 0 takes its alarm from the terminal-information bits
//!   3..=5: SOS -> 1, power cut -> 2, shock -> 3, low battery -> 14 (0x0E, "low external
//!   battery"). When neither says anything, the frame is a position and becomes a GPS record.
//! - `remoteLock` and `oilEle` both come from terminal-information bit 7 (oil/electricity
//!   cut): GT06 has one bit for the remote fuel cut, and the Jimi names describe its two faces.
//! - 0x23 heartbeats report battery volts, not a level: `powerLevel` is then a percentage on
//!   a linear single-cell Li-ion scale (3.50 V = 0 %, 4.20 V = 100 %, clamped) and the volts
//!   are kept in `voltage`.
//! - `lbsJson` lists cells as `LAC,CI,RSSI` (RSSI 0 when the frame has none) and access points
//!   as `aa:bb:cc:dd:ee:ff,RSSI`, entries joined by `;`; `wifiList` is present only when the
//!   report carries access points, and then `postType` is `WIFI`.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::codec::gt06::{Alarm, Cell, Gps, Heartbeat, LbsReport, Location, WifiAp, WifiReport};
use crate::event::{
    jimi_time, AlarmMsg, AlarmRecord, AlertType, Event, GpsExtra, GpsRecord, HeartbeatRecord,
    LbsRecord, LoginRecord, Record,
};
use crate::imei::Imei;

/// `/pushevent` type of a session that starts.
pub const LOGIN: &str = "LOGIN";
/// `/pushevent` type of a session that ends.
pub const LOGOUT: &str = "LOGOUT";

/// `msgClass` of alarms from GT06 ("JIMI") devices.
pub const MSG_CLASS_JIMI: u8 = 0;
/// `type` of an alarm raised by the device itself.
pub const ALARM_KIND_DEVICE: &str = "DEVICE";

/// Alarm codes taken from the terminal-information bits when the alarm byte is 0.
pub const ALARM_SOS: u8 = 0x01;
pub const ALARM_POWER_CUT: u8 = 0x02;
pub const ALARM_SHOCK: u8 = 0x03;
pub const ALARM_LOW_BATTERY: u8 = 0x0E;

/// Bits of [`GpsRecord::status`] for GT06 devices.
pub const STATUS_ACC: u64 = 1 << 0;
pub const STATUS_POSITIONED: u64 = 1 << 1;
pub const STATUS_SOUTH: u64 = 1 << 2;
pub const STATUS_WEST: u64 = 1 << 3;
pub const STATUS_REUPLOAD: u64 = 1 << 4;

/// GT06 protocol numbers whose fix time is device-local when the login announced a zone.
const LOCAL_TIME_PROTOCOLS: [u8; 5] = [0x10, 0x11, 0x12, 0x16, 0x1A];

/// A position as every device protocol reports it, in the units of the push records.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fix {
    /// Fix time, UTC.
    pub time: DateTime<Utc>,
    /// Signed decimal degrees, south negative.
    pub latitude: f64,
    /// Signed decimal degrees, west negative.
    pub longitude: f64,
    pub speed_kmh: f64,
    /// Degrees, 0 = north, clockwise.
    pub course: u32,
    pub satellites: u32,
    pub positioned: bool,
}

impl Fix {
    /// The GT06 GPS block of a frame of type `protocol`, its time read per the login zone.
    pub fn from_gt06(protocol: u8, gps: &Gps, zone_minutes: Option<i16>) -> Fix {
        Fix {
            time: fix_time(protocol, gps.time, zone_minutes),
            latitude: gps.latitude,
            longitude: gps.longitude,
            speed_kmh: f64::from(gps.speed_kmh),
            course: u32::from(gps.course),
            satellites: u32::from(gps.satellites),
            positioned: gps.positioned,
        }
    }
}

/// Rounds degrees to the 6 decimals the Jimi records carry.
pub fn round_degrees(degrees: f64) -> f64 {
    if degrees.is_finite() {
        (degrees * 1e6).round() / 1e6
    } else {
        0.0
    }
}

/// The UTC time of a GT06 fix: the time as sent, shifted back by the login zone for the
/// types whose time is device-local (see the module notes).
pub fn fix_time(protocol: u8, sent: DateTime<Utc>, zone_minutes: Option<i16>) -> DateTime<Utc> {
    match zone_minutes {
        Some(zone) if LOCAL_TIME_PROTOCOLS.contains(&protocol) => sent
            .checked_sub_signed(TimeDelta::minutes(i64::from(zone)))
            .unwrap_or(sent),
        _ => sent,
    }
}

/// `GMT+08:00` form of a zone in minutes east of UTC; `GMT+00:00` when the device sent none.
pub fn gmt_offset(zone_minutes: Option<i16>) -> String {
    let minutes = i32::from(zone_minutes.unwrap_or(0));
    let sign = if minutes < 0 { '-' } else { '+' };
    let abs = minutes.unsigned_abs();
    format!("GMT{sign}{:02}:{:02}", abs / 60, abs % 60)
}

/// `/pushevent` record: `kind` is [`LOGIN`] or [`LOGOUT`].
pub fn login_record(
    imei: Imei,
    kind: &str,
    zone_minutes: Option<i16>,
    now: DateTime<Utc>,
) -> LoginRecord {
    LoginRecord {
        device_imei: imei,
        kind: kind.to_string(),
        gate_time: jimi_time(now),
        timezone: gmt_offset(zone_minutes),
    }
}

/// Battery percentage of a single Li-ion cell from its voltage (linear 3.50..=4.20 V).
pub fn battery_percent(volts: f64) -> u32 {
    const EMPTY: f64 = 3.50;
    const FULL: f64 = 4.20;
    if !volts.is_finite() {
        return 0;
    }
    let ratio = ((volts - EMPTY) / (FULL - EMPTY)).clamp(0.0, 1.0);
    // The clamp keeps the value in 0..=100, so the cast cannot truncate.
    (ratio * 100.0).round() as u32
}

/// `/pushhb` record of a 0x13 or 0x23 heartbeat.
pub fn heartbeat_record(imei: Imei, hb: &Heartbeat, now: DateTime<Utc>) -> HeartbeatRecord {
    let info = hb.terminal_info;
    let power_level = match (hb.voltage_level, hb.battery_volts) {
        (Some(level), _) => u32::from(level),
        (None, Some(volts)) => battery_percent(volts),
        (None, None) => 0,
    };
    HeartbeatRecord {
        device_imei: imei,
        gate_time: jimi_time(now),
        power_level,
        gsm_sign: u32::from(hb.gsm_signal),
        acc: u8::from(info.acc_on()),
        oil_ele: u8::from(info.oil_cut()),
        gps_pos: u8::from(info.gps_positioned()),
        remote_lock: u8::from(info.oil_cut()),
        power_status: u8::from(info.charging()),
        fortify: u8::from(info.armed()),
        voltage: hb.battery_volts,
    }
}

/// [`GpsRecord::status`] bits of a GT06 position.
pub fn gps_status(acc: bool, fix: &Fix, reupload: bool) -> u64 {
    let mut status = 0;
    if acc {
        status |= STATUS_ACC;
    }
    if fix.positioned {
        status |= STATUS_POSITIONED;
    }
    if fix.latitude < 0.0 {
        status |= STATUS_SOUTH;
    }
    if fix.longitude < 0.0 {
        status |= STATUS_WEST;
    }
    if reupload {
        status |= STATUS_REUPLOAD;
    }
    status
}

/// A `/pushgps` record with the fix filled in and every protocol-specific field at its
/// neutral value (real time, ACC off, `postType` 1 GPS, no odometer, status 0, no cell):
/// each protocol overrides what its frames carry.
pub fn gps_record_base(imei: Imei, fix: &Fix, now: DateTime<Utc>) -> GpsRecord {
    GpsRecord {
        device_imei: imei,
        gps_time: jimi_time(fix.time),
        gate_time: jimi_time(now),
        satellite_num: fix.satellites,
        lng: round_degrees(fix.longitude),
        lat: round_degrees(fix.latitude),
        gps_mode: 0,
        gps_speed: fix.speed_kmh,
        direction: fix.course,
        acc: 0,
        post_type: 1,
        post_method: None,
        altitude: 0.0,
        distance: 0,
        status: 0,
        mcc: None,
        mnc: None,
        lac: None,
        cell_id: None,
        extra: GpsExtra::default(),
    }
}

fn with_cell(mut record: GpsRecord, cell: Option<&Cell>) -> GpsRecord {
    if let Some(cell) = cell {
        record.mcc = Some(u32::from(cell.mcc));
        record.mnc = Some(u32::from(cell.mnc));
        record.lac = Some(u64::from(cell.lac));
        record.cell_id = Some(cell.cell_id);
    }
    record
}

/// `/pushgps` record of a GT06 location-family frame of type `protocol`.
///
/// ACC comes from the 0x22-family ACC byte, else from the course/status word when it carries
/// one, else it is reported off.
pub fn gps_record(
    imei: Imei,
    protocol: u8,
    location: &Location,
    zone_minutes: Option<i16>,
    now: DateTime<Utc>,
) -> GpsRecord {
    let fix = Fix::from_gt06(protocol, &location.gps, zone_minutes);
    let acc = location.acc.or(location.gps.acc).unwrap_or(false);
    let record = GpsRecord {
        gps_mode: u8::from(location.reupload),
        acc: u8::from(acc),
        post_method: location.upload_mode,
        distance: location.mileage_m.map_or(0, u64::from),
        status: gps_status(acc, &fix, location.reupload),
        ..gps_record_base(imei, &fix, now)
    };
    with_cell(record, location.cell.as_ref())
}

/// `/pushalarm` record of any protocol. Without a fix (LBS-only alarms) the alarm time is
/// the gateway time and the position is 0, 0, as the Jimi hub reports an alarm it could
/// not locate.
pub fn alarm_record(
    imei: Imei,
    msg_class: u8,
    alert_type: AlertType,
    fix: Option<&Fix>,
    fence_id: Option<u32>,
    now: DateTime<Utc>,
) -> AlarmRecord {
    let msg = AlarmMsg {
        alert_type,
        alarm_time: jimi_time(fix.map_or(now, |f| f.time)),
        lat: fix.map_or(0.0, |f| round_degrees(f.latitude)),
        lng: fix.map_or(0.0, |f| round_degrees(f.longitude)),
        gps_speed: fix.map_or(0.0, |f| f.speed_kmh),
        satellite_num: fix.map_or(0, |f| f.satellites),
        device_imei: imei,
        direction: fix.map(|f| f.course),
        fence_id,
        alert_value: None,
        standard_alarm_value: None,
        alarm_serial_no: None,
        alarm_type: None,
        alarm_level: None,
        fatigue_level: None,
        alarm_id: None,
        alarm_status: None,
        alarm_label: None,
        signal_drop_channel: None,
        signal_cover_channel: None,
        storage_fault_channel: None,
        omitted_alarms: None,
    };
    AlarmRecord {
        gate_time: jimi_time(now),
        imei,
        device_imei: imei,
        msg_class,
        kind: ALARM_KIND_DEVICE.to_string(),
        msg,
    }
}

/// The alarm a GT06 alarm frame reports: its alarm byte, or when that is 0 the alarm of the
/// terminal-information bits; `None` when the frame reports no alarm at all.
pub fn effective_alarm_code(alarm: &Alarm) -> Option<u8> {
    if alarm.alarm_code != 0 {
        return Some(alarm.alarm_code);
    }
    match alarm.terminal_info.alarm_bits() {
        0b100 => Some(ALARM_SOS),
        0b010 => Some(ALARM_POWER_CUT),
        0b001 => Some(ALARM_SHOCK),
        0b011 => Some(ALARM_LOW_BATTERY),
        _ => None,
    }
}

/// `/pushalarm` record of a GT06 alarm frame of type `protocol`; `None` when the frame
/// reports no alarm (see [`effective_alarm_code`]).
///
/// The fence number is reported as sent (0 = the first fence); 0xFF, "invalid", is left out.
pub fn gt06_alarm_record(
    imei: Imei,
    protocol: u8,
    alarm: &Alarm,
    zone_minutes: Option<i16>,
    now: DateTime<Utc>,
) -> Option<AlarmRecord> {
    let code = effective_alarm_code(alarm)?;
    let fix = alarm
        .gps
        .as_ref()
        .map(|gps| Fix::from_gt06(protocol, gps, zone_minutes));
    let fence = alarm.fence.filter(|&f| f != 0xFF).map(u32::from);
    Some(alarm_record(
        imei,
        MSG_CLASS_JIMI,
        AlertType::Code(u32::from(code)),
        fix.as_ref(),
        fence,
        now,
    ))
}

/// `/pushgps` record of an alarm frame that reports no alarm but carries a GPS block.
pub fn alarm_position_record(
    imei: Imei,
    protocol: u8,
    alarm: &Alarm,
    zone_minutes: Option<i16>,
    now: DateTime<Utc>,
) -> Option<GpsRecord> {
    let gps = alarm.gps.as_ref()?;
    let fix = Fix::from_gt06(protocol, gps, zone_minutes);
    let acc = gps.acc.unwrap_or_else(|| alarm.terminal_info.acc_on());
    let record = GpsRecord {
        acc: u8::from(acc),
        distance: alarm.mileage_m.map_or(0, u64::from),
        status: gps_status(acc, &fix, false),
        ..gps_record_base(imei, &fix, now)
    };
    Some(with_cell(record, alarm.cell.as_ref()))
}

/// The `lbsJson` object, fields in the documented order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LbsJson {
    mcc: u16,
    mnc: u16,
    cell_list: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    wifi_list: Option<String>,
}

/// `LAC,CI,RSSI;...` of a cell list.
pub fn cell_list(cells: &[Cell]) -> String {
    cells
        .iter()
        .map(|c| format!("{},{},{}", c.lac, c.cell_id, c.rssi.unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(";")
}

/// `MAC,RSSI;...` of an access-point list, MACs as `aa:bb:cc:dd:ee:ff`.
pub fn wifi_list(aps: &[WifiAp]) -> String {
    aps.iter()
        .map(|ap| {
            let [a, b, c, d, e, f] = ap.mac;
            format!(
                "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x},{}",
                ap.rssi
            )
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// The `lbsJson` text: MCC and MNC of the first (serving) cell, 0 when there is none.
pub fn lbs_json(cells: &[Cell], aps: &[WifiAp]) -> String {
    let serving = cells.first().copied().unwrap_or_default();
    let json = LbsJson {
        mcc: serving.mcc,
        mnc: serving.mnc,
        cell_list: cell_list(cells),
        wifi_list: (!aps.is_empty()).then(|| wifi_list(aps)),
    };
    // Serializing a struct of numbers and strings cannot fail.
    serde_json::to_string(&json).unwrap_or_default()
}

fn lbs_record_of(
    imei: Imei,
    time: DateTime<Utc>,
    cells: &[Cell],
    aps: &[WifiAp],
    now: DateTime<Utc>,
) -> LbsRecord {
    LbsRecord {
        device_imei: imei,
        gate_time: jimi_time(now),
        post_type: if aps.is_empty() { "LBS" } else { "WIFI" }.to_string(),
        lbs_json: lbs_json(cells, aps),
        post_time: Some(jimi_time(time)),
    }
}

/// `/pushlbs` record of a 0x18/0x28 multi-cell report.
pub fn lbs_record(imei: Imei, report: &LbsReport, now: DateTime<Utc>) -> LbsRecord {
    lbs_record_of(imei, report.time, &report.cells, &[], now)
}

/// `/pushlbs` record of a 0x2C/0x69/0x17 WiFi + cell report.
pub fn wifi_record(imei: Imei, report: &WifiReport, now: DateTime<Utc>) -> LbsRecord {
    lbs_record_of(imei, report.time, &report.cells, &report.aps, now)
}

/// Wraps a record into the event of its topic.
pub fn event(imei: Imei, record: Record) -> Event {
    Event {
        topic: record.topic(),
        imei,
        record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::gt06::TerminalInfo;
    use crate::event::Topic;
    use chrono::TimeZone;

    fn imei() -> Imei {
        Imei::parse("864717003283581").unwrap()
    }

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn gps(time: DateTime<Utc>) -> Gps {
        Gps {
            time,
            satellites: 8,
            latitude: 41_601_028.0 / 1_800_000.0,
            longitude: 205_936_656.0 / 1_800_000.0,
            speed_kmh: 12,
            course: 111,
            positioned: true,
            differential: false,
            acc: None,
        }
    }

    fn alarm(code: u8, info: u8) -> Alarm {
        Alarm {
            gps: Some(gps(at(2015, 12, 29, 10, 43, 33))),
            cell: Some(Cell {
                mcc: 460,
                mnc: 0,
                lac: 0x287D,
                cell_id: 0x1F71,
                rssi: None,
            }),
            terminal_info: TerminalInfo(info),
            voltage_level: 4,
            gsm_signal: 4,
            alarm_code: code,
            language: 1,
            fence: None,
            mileage_m: None,
        }
    }

    #[test]
    fn gmt_offset_east() {
        assert_eq!(gmt_offset(Some(480)), "GMT+08:00");
    }

    #[test]
    fn gmt_offset_west_with_minutes() {
        assert_eq!(gmt_offset(Some(-210)), "GMT-03:30");
    }

    #[test]
    fn gmt_offset_absent_is_utc() {
        assert_eq!(gmt_offset(None), "GMT+00:00");
    }

    #[test]
    fn gmt_offset_extreme_zone() {
        assert_eq!(gmt_offset(Some(i16::MIN)), "GMT-546:08");
    }

    #[test]
    fn fix_time_shifts_local_types_by_login_zone() {
        let sent = at(2015, 10, 20, 14, 21, 11);
        assert_eq!(fix_time(0x12, sent, Some(480)), at(2015, 10, 20, 6, 21, 11));
    }

    #[test]
    fn fix_time_never_shifts_utc_types() {
        let sent = at(2015, 10, 20, 14, 21, 11);
        assert_eq!(fix_time(0x22, sent, Some(480)), sent);
    }

    #[test]
    fn fix_time_without_zone_is_as_sent() {
        let sent = at(2015, 10, 20, 14, 21, 11);
        assert_eq!(fix_time(0x12, sent, None), sent);
    }

    #[test]
    fn battery_percent_scale() {
        assert_eq!(battery_percent(3.50), 0);
        assert_eq!(battery_percent(4.20), 100);
        assert_eq!(battery_percent(3.85), 50);
        assert_eq!(battery_percent(2.0), 0);
        assert_eq!(battery_percent(12.6), 100);
        assert_eq!(battery_percent(f64::NAN), 0);
    }

    #[test]
    fn round_degrees_six_decimals() {
        assert_eq!(round_degrees(54.945_346_666_666_67), 54.945347);
        assert_eq!(round_degrees(-46.932_547_2), -46.932547);
        assert_eq!(round_degrees(f64::INFINITY), 0.0);
    }

    #[test]
    fn effective_alarm_prefers_alarm_byte() {
        assert_eq!(effective_alarm_code(&alarm(0x06, 0x48)), Some(0x06));
    }

    #[test]
    fn effective_alarm_from_terminal_bits() {
        // Bits 3..=5 of terminal info: 100 SOS, 010 power cut, 001 shock, 011 low battery.
        assert_eq!(effective_alarm_code(&alarm(0, 0b0010_0000)), Some(1));
        assert_eq!(effective_alarm_code(&alarm(0, 0b0001_0000)), Some(2));
        assert_eq!(effective_alarm_code(&alarm(0, 0b0000_1000)), Some(3));
        assert_eq!(effective_alarm_code(&alarm(0, 0b0001_1000)), Some(14));
    }

    #[test]
    fn effective_alarm_none_when_nothing_reported() {
        assert_eq!(effective_alarm_code(&alarm(0, 0x46)), None);
    }

    #[test]
    fn effective_alarm_ignores_traccar_only_bit_values() {
        // 110 (geofence) and 111 (removing) are traccar readings, not GT06 alarms.
        assert_eq!(effective_alarm_code(&alarm(0, 0b0011_0000)), None);
        assert_eq!(effective_alarm_code(&alarm(0, 0b0011_1000)), None);
    }

    #[test]
    fn alarm_fence_invalid_is_dropped() {
        let mut a = alarm(0x05, 0);
        a.fence = Some(0xFF);
        let r = gt06_alarm_record(imei(), 0x27, &a, None, at(2020, 1, 1, 0, 0, 0)).unwrap();
        assert_eq!(r.msg.fence_id, None);
    }

    #[test]
    fn alarm_fence_reported_as_sent() {
        let mut a = alarm(0x05, 0);
        a.fence = Some(0);
        let r = gt06_alarm_record(imei(), 0x27, &a, None, at(2020, 1, 1, 0, 0, 0)).unwrap();
        assert_eq!(r.msg.fence_id, Some(0));
    }

    #[test]
    fn lbs_only_alarm_json() {
        let mut a = alarm(0x01, 0);
        a.gps = None;
        let now = at(2024, 5, 6, 7, 8, 9);
        let r = gt06_alarm_record(imei(), 0x19, &a, None, now).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(
            json,
            r#"{"gateTime":"2024-05-06 07:08:09","imei":"864717003283581","deviceImei":"864717003283581","msgClass":0,"type":"DEVICE","msg":{"alertType":1,"alarmTime":"2024-05-06 07:08:09","lat":0.0,"lng":0.0,"gpsSpeed":0.0,"satelliteNum":0,"deviceImei":"864717003283581"}}"#
        );
    }

    #[test]
    fn alarm_without_alarm_becomes_position() {
        let a = alarm(0, 0x42);
        let now = at(2024, 5, 6, 7, 8, 9);
        let r = alarm_position_record(imei(), 0x26, &a, None, now).unwrap();
        assert_eq!(r.acc, 1);
        assert_eq!(r.status, STATUS_ACC | STATUS_POSITIONED);
        assert_eq!(r.mcc, Some(460));
    }

    #[test]
    fn gps_status_south_west_reupload() {
        let fix = Fix {
            time: at(2014, 9, 20, 22, 15, 7),
            latitude: -19.6,
            longitude: -46.9,
            speed_kmh: 0.0,
            course: 184,
            satellites: 9,
            positioned: true,
        };
        assert_eq!(gps_status(true, &fix, true), 0b1_1111);
        assert_eq!(gps_status(false, &fix, false), 0b0_1110);
    }

    #[test]
    fn lbs_json_cells_only() {
        let cells = [
            Cell {
                mcc: 724,
                mnc: 10,
                lac: 10365,
                cell_id: 8049,
                rssi: Some(62),
            },
            Cell {
                mcc: 724,
                mnc: 10,
                lac: 10365,
                cell_id: 8050,
                rssi: Some(49),
            },
        ];
        assert_eq!(
            lbs_json(&cells, &[]),
            r#"{"mcc":724,"mnc":10,"cellList":"10365,8049,62;10365,8050,49"}"#
        );
    }

    #[test]
    fn lbs_json_with_wifi() {
        let cells = [Cell {
            mcc: 460,
            mnc: 0,
            lac: 1,
            cell_id: 2,
            rssi: None,
        }];
        let aps = [
            WifiAp {
                mac: [0x00, 0x18, 0x01, 0xEB, 0x40, 0x39],
                rssi: 56,
            },
            WifiAp {
                mac: [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF],
                rssi: -70,
            },
        ];
        assert_eq!(
            lbs_json(&cells, &aps),
            r#"{"mcc":460,"mnc":0,"cellList":"1,2,0","wifiList":"00:18:01:eb:40:39,56;aa:bb:cc:dd:ee:ff,-70"}"#
        );
    }

    #[test]
    fn lbs_json_without_cells() {
        assert_eq!(lbs_json(&[], &[]), r#"{"mcc":0,"mnc":0,"cellList":""}"#);
    }

    #[test]
    fn event_topic_follows_record() {
        let r = login_record(imei(), LOGIN, None, at(2020, 1, 1, 0, 0, 0));
        assert_eq!(event(imei(), Record::Login(r)).topic, Topic::Event);
    }

    #[test]
    fn heartbeat_0x23_reports_percent_and_volts() {
        let hb = Heartbeat {
            terminal_info: TerminalInfo(0xC0),
            voltage_level: None,
            battery_volts: Some(4.20),
            gsm_signal: 4,
            alarm_code: 0,
            language: 1,
        };
        let r = heartbeat_record(imei(), &hb, at(2020, 1, 1, 0, 0, 0));
        assert_eq!(r.power_level, 100);
        assert_eq!(r.voltage, Some(4.20));
        assert_eq!(r.oil_ele, 1);
        assert_eq!(r.remote_lock, 1);
        assert_eq!(r.gps_pos, 1);
    }
}
