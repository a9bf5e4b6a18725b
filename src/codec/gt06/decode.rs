//! Bytes -> frames for GT06. Two stages, both pure and allocation-free until a message
//! needs owned data (text, lists): `frame_at` finds where a frame starts and ends, applying
//! the framing exceptions real devices force on us, and `message` reads the content.
//!
//! Rule for bodies: once a frame is cut out, its content never makes the stream fail. A
//! protocol number we do not know, a body too short for its type, or a field that cannot be
//! valid (a date of month 13, an IMEI with hex digits) all yield `Message::Unknown` with the
//! raw content, so the caller can log it and keep the connection. Errors are reserved for
//! framing, where the byte stream itself can no longer be trusted.

use chrono::{DateTime, NaiveDate, Utc};

use super::crc::crc_itu;
use super::message::*;
use super::{DecodeError, Decoded, MAX_FRAME_LEN, MAX_GARBAGE};
use crate::codec::CrcPolicy;
use crate::imei::Imei;

const STOP: [u8; 2] = [0x0D, 0x0A];

/// How the serial and CRC sit in a frame.
#[derive(Clone, Copy)]
enum Tail {
    /// `serial:2 crc:2` before the stop bytes.
    SerialCrc,
    /// Nothing between content and stop bytes (WiFi AP-count form, ZhongXun 0x10/0x11,
    /// short logins, lengths too small to hold a serial).
    Bare,
}

/// A frame located in the buffer: offsets relative to its start marker.
struct Cut {
    extended: bool,
    protocol: u8,
    /// Content range (after the protocol number, before serial/CRC or stop).
    content: (usize, usize),
    total: usize,
    tail: Tail,
}

pub(super) fn decode(buf: &[u8], policy: CrcPolicy) -> Result<Option<Decoded>, DecodeError> {
    let Some(skipped) = find_start(buf)? else {
        return Ok(None);
    };
    let f = &buf[skipped..];
    let Some(cut) = frame_at(f)? else {
        return Ok(None);
    };
    let (serial, crc_ok) = match cut.tail {
        Tail::Bare => (None, None),
        Tail::SerialCrc => {
            let serial = be16(f, cut.total - 6);
            let got = be16(f, cut.total - 4);
            let expected = crc_itu(&f[2..cut.total - 4]);
            if got != expected && policy == CrcPolicy::Reject {
                return Err(DecodeError::Crc { got, expected });
            }
            (Some(serial), Some(got == expected))
        }
    };
    let content = &f[cut.content.0..cut.content.1];
    let message = message(cut.extended, cut.protocol, content, serial.is_some());
    Ok(Some(Decoded {
        frame: Frame {
            extended: cut.extended,
            protocol: cut.protocol,
            serial,
            crc_ok,
            message,
        },
        consumed: skipped + cut.total,
        skipped,
    }))
}

/// Offset of the first start marker, skipping at most [`MAX_GARBAGE`] bytes.
fn find_start(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    let candidates = buf.len().saturating_sub(1).min(MAX_GARBAGE + 1);
    for i in 0..candidates {
        let b = buf[i];
        if (b == 0x78 || b == 0x79) && buf[i + 1] == b {
            return Ok(Some(i));
        }
    }
    if buf.len() > MAX_GARBAGE + 1 {
        return Err(DecodeError::BadStart(buf[0], buf[1]));
    }
    Ok(None)
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn stop_at(f: &[u8], total: usize) -> bool {
    f.get(total - 2..total) == Some(&STOP[..])
}

/// Locates the frame starting at `f[0]` (a start marker): `Ok(None)` if more bytes are needed.
fn frame_at(f: &[u8]) -> Result<Option<Cut>, DecodeError> {
    if f.len() < 4 {
        return Ok(None);
    }
    if f[0] == 0x79 {
        if f.len() < 5 {
            return Ok(None);
        }
        let len = usize::from(be16(f, 2));
        return standard(f, true, f[4], 5, len + 6);
    }
    let len = usize::from(f[2]);
    let protocol = f[3];
    let total = len + 5;
    match protocol {
        // byte 2 may be the WiFi AP count instead of a length (reference §4.9/§4.10).
        0x69 | 0x17 => {
            if len >= 5 {
                if f.len() < total {
                    return Ok(None);
                }
                if complete_with_crc(f, total) {
                    return standard(f, false, protocol, 4, total);
                }
            }
            wifi_ap_count_form(f, protocol)
        }
        // ZhongXun GPS: the length counts only the content and there is no serial/CRC.
        0x10 | 0x11 => {
            if f.len() < total {
                return Ok(None);
            }
            if stop_at(f, total) {
                return standard(f, false, protocol, 4, total);
            }
            if f.len() < total + 1 {
                return Ok(None);
            }
            if stop_at(f, total + 1) {
                return Ok(Some(Cut {
                    extended: false,
                    protocol,
                    content: (4, total - 1),
                    total: total + 1,
                    tail: Tail::Bare,
                }));
            }
            Err(DecodeError::BadStop)
        }
        // Heartbeats whose length byte leaves serial+CRC... 2 bytes short (traccar #1727).
        0x13 if len == 8 => standard(f, false, protocol, 4, total + 2),
        // ZhongXun-style login: IMEI + 1 version byte, no serial/CRC, whatever the length
        // says. A standard login whose serial low byte and CRC high byte happen to read
        // `0d 0a` looks the same at 15 bytes, so a complete standard frame with a valid CRC
        // wins when the buffer already holds it.
        0x01 if f.len() >= 15
            && f[13..15] == STOP
            && f[4..12].iter().all(|&b| is_bcd(b))
            && !complete_with_crc(f, total) =>
        {
            Ok(Some(Cut {
                extended: false,
                protocol,
                content: (4, 13),
                total: 15,
                tail: Tail::Bare,
            }))
        }
        _ => standard(f, false, protocol, 4, total),
    }
}

/// True when `f` holds a whole standard frame of `total` bytes whose CRC verifies.
fn complete_with_crc(f: &[u8], total: usize) -> bool {
    total >= 9
        && f.len() >= total
        && stop_at(f, total)
        && be16(f, total - 4) == crc_itu(&f[2..total - 4])
}

fn is_bcd(b: u8) -> bool {
    b >> 4 <= 9 && b & 0x0F <= 9
}

/// A frame whose length field is right: `total` bytes from the marker to the stop bytes.
fn standard(
    f: &[u8],
    extended: bool,
    protocol: u8,
    header: usize,
    total: usize,
) -> Result<Option<Cut>, DecodeError> {
    if total > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong(total));
    }
    // The length field must at least cover the protocol number.
    if total < header + 2 {
        return Err(DecodeError::BadStop);
    }
    if f.len() < total {
        return Ok(None);
    }
    if !stop_at(f, total) {
        return Err(DecodeError::BadStop);
    }
    // Room for serial + CRC after the protocol number? Otherwise the frame has neither.
    let (end, tail) = if total >= header + 6 {
        (total - 6, Tail::SerialCrc)
    } else {
        (total - 2, Tail::Bare)
    };
    Ok(Some(Cut {
        extended,
        protocol,
        content: (header, end),
        total,
        tail,
    }))
}

/// `78 78 <n APs> <proto> <BCD time 6> <n x (MAC 6, RSSI 1)> <m cells> <MCC 2> <MNC 1>
/// <m x (LAC 2, CI 2, RSSI 1)> 0d 0a`: the end follows from the two counts, so the frame is
/// cut where its structure says rather than at the first `0d 0a` (a MAC may contain one).
fn wifi_ap_count_form(f: &[u8], protocol: u8) -> Result<Option<Cut>, DecodeError> {
    let aps = usize::from(f[2]);
    let cells_at = 10 + 7 * aps;
    let Some(&cells) = f.get(cells_at) else {
        return Ok(None);
    };
    let total = cells_at + 1 + 3 + 5 * usize::from(cells) + 2;
    if total > MAX_FRAME_LEN {
        return Err(DecodeError::TooLong(total));
    }
    if f.len() < total {
        return Ok(None);
    }
    if !stop_at(f, total) {
        return Err(DecodeError::BadStop);
    }
    Ok(Some(Cut {
        extended: false,
        protocol,
        content: (2, total - 2),
        total,
        tail: Tail::Bare,
    }))
}

/// Big-endian reader over a content slice; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.pos..];
        self.pos = self.buf.len();
        s
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }
    fn u24(&mut self) -> Option<u32> {
        let [a, b, c] = self.array()?;
        Some(u32::from_be_bytes([0, a, b, c]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }
}

fn message(extended: bool, protocol: u8, content: &[u8], has_serial: bool) -> Message {
    if content.is_empty() && has_serial && protocol != 0x8A {
        return Message::Ack;
    }
    let parsed = match protocol {
        0x01 => login(content),
        0x13 => heartbeat(content),
        0x23 => heartbeat_volts(content),
        0x10 | 0x11 | 0x12 | 0x22 | 0x37 | 0xA0 => location(protocol, content),
        0x32 => location_32(extended, content),
        0x16 | 0x26 | 0x27 | 0xA4 => alarm(protocol, content),
        0x19 => lbs_alarm(content),
        0x18 | 0x28 => lbs(content),
        0x2C => wifi_2c(content),
        0x69 | 0x17 if !has_serial => wifi_ap_count(content),
        0x80 => online_command(content),
        0x15 => reply_15(content),
        0x21 => reply_21(content),
        0x8A => time(content),
        0x94 => info(extended, content),
        _ => None,
    };
    parsed.unwrap_or_else(|| Message::Unknown {
        content: content.to_vec(),
    })
}

/// 6 binary bytes YY MM DD hh mm ss (year + 2000), read as UTC.
pub(super) fn binary_time(t: [u8; 6]) -> Option<DateTime<Utc>> {
    ymdhms(t.map(u32::from))
}

/// 6 BCD bytes YYMMDDhhmmss (WiFi AP-count form).
fn bcd_time(t: [u8; 6]) -> Option<DateTime<Utc>> {
    if !t.iter().all(|&b| is_bcd(b)) {
        return None;
    }
    ymdhms(t.map(|b| u32::from(b >> 4) * 10 + u32::from(b & 0x0F)))
}

fn ymdhms([y, mo, d, h, mi, s]: [u32; 6]) -> Option<DateTime<Utc>> {
    let date = NaiveDate::from_ymd_opt(2000 + y as i32, mo, d)?;
    Some(date.and_hms_opt(h, mi, s)?.and_utc())
}

/// The 18-byte GPS block. The bytes are always consumed; `None` when its date is not a
/// real date (devices without a fix since boot send zeros).
fn gps(r: &mut Reader) -> Option<Option<Gps>> {
    let time = r.array::<6>()?;
    let info = r.u8()?;
    let lat = r.u32()?;
    let lon = r.u32()?;
    let speed = r.u8()?;
    let status = r.u16()?;
    Some(binary_time(time).map(|time| gps_fields(time, info & 0x0F, lat, lon, speed, status)))
}

fn gps_fields(
    time: DateTime<Utc>,
    satellites: u8,
    lat: u32,
    lon: u32,
    speed_kmh: u8,
    status: u16,
) -> Gps {
    let mut latitude = f64::from(lat) / 1_800_000.0;
    let mut longitude = f64::from(lon) / 1_800_000.0;
    if status & 0x0400 == 0 {
        latitude = -latitude;
    }
    if status & 0x0800 != 0 {
        longitude = -longitude;
    }
    Gps {
        time,
        satellites,
        latitude,
        longitude,
        speed_kmh,
        course: status & 0x03FF,
        positioned: status & 0x1000 != 0,
        differential: status & 0x2000 != 0,
        acc: (status & 0x4000 != 0).then_some(status & 0x8000 != 0),
    }
}

/// MCC (bit 15 => 2-byte MNC), MNC, LAC (2 or 4 bytes), cell id (3 or 8 bytes).
fn cell(r: &mut Reader, wide: bool) -> Option<Cell> {
    let (mcc, mnc) = mcc_mnc(r)?;
    let (lac, cell_id) = if wide {
        (r.u32()?, r.u64()?)
    } else {
        (u32::from(r.u16()?), u64::from(r.u24()?))
    };
    Some(Cell {
        mcc,
        mnc,
        lac,
        cell_id,
        rssi: None,
    })
}

fn mcc_mnc(r: &mut Reader) -> Option<(u16, u16)> {
    let mcc = r.u16()?;
    let mnc = if mcc & 0x8000 != 0 {
        r.u16()?
    } else {
        u16::from(r.u8()?)
    };
    Some((mcc & 0x7FFF, mnc))
}

fn login(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let id = r.array::<8>()?;
    if !id.iter().all(|&b| is_bcd(b)) {
        return None;
    }
    let mut digits = [0u8; 16];
    for (i, b) in id.iter().enumerate() {
        digits[2 * i] = b'0' + (b >> 4);
        digits[2 * i + 1] = b'0' + (b & 0x0F);
    }
    // 16 nibbles for a 15-digit IMEI: the first is padding.
    let imei = Imei::parse(std::str::from_utf8(&digits[1..]).ok()?).ok()?;
    // A lone byte after the IMEI is the ZhongXun software version, not a type id.
    let type_id = if r.remaining() >= 2 { r.u16() } else { None };
    let (timezone_minutes, language) = match r.u16() {
        Some(word) => {
            let value = word >> 4;
            let minutes = (value / 100 * 60 + value % 100) as i16;
            let minutes = if word & 0x0008 != 0 {
                -minutes
            } else {
                minutes
            };
            (Some(minutes), Some((word & 0x03) as u8))
        }
        None => (None, None),
    };
    Some(Message::Login(Login {
        imei,
        type_id,
        timezone_minutes,
        language,
    }))
}

fn heartbeat(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let terminal_info = TerminalInfo(r.u8()?);
    let voltage_level = r.u8()?;
    let gsm_signal = r.u8()?;
    let alarm_code = r.u8()?;
    let language = r.u8()?;
    Some(Message::Heartbeat(Heartbeat {
        terminal_info,
        voltage_level: Some(voltage_level),
        battery_volts: None,
        gsm_signal,
        alarm_code,
        language,
    }))
}

fn heartbeat_volts(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let terminal_info = TerminalInfo(r.u8()?);
    let centivolts = r.u16()?;
    let gsm_signal = r.u8()?;
    let alarm_code = r.u8()?;
    let language = r.u8()?;
    Some(Message::Heartbeat(Heartbeat {
        terminal_info,
        voltage_level: None,
        battery_volts: Some(f64::from(centivolts) / 100.0),
        gsm_signal,
        alarm_code,
        language,
    }))
}

fn location(protocol: u8, c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let gps = gps(&mut r)??;
    let mut loc = Location {
        gps,
        cell: None,
        acc: None,
        upload_mode: None,
        reupload: false,
        mileage_m: None,
    };
    match protocol {
        // G, then S1 reserved bytes or nothing (ZhongXun).
        0x10 => {}
        // traccar's layout: MCC 2, MNC 2, LAC 2, CI 4; ZhongXun sends other bytes here.
        0x11 => {
            if r.remaining() >= 10 {
                let mcc = r.u16()?;
                let mnc = r.u16()?;
                let lac = u32::from(r.u16()?);
                let cell_id = u64::from(r.u32()?);
                loc.cell = Some(Cell {
                    mcc: mcc & 0x7FFF,
                    mnc,
                    lac,
                    cell_id,
                    rssi: None,
                });
            }
        }
        0x12 => loc.cell = Some(cell(&mut r, false)?),
        _ => {
            // 0x22 / 0x37 / 0xA0: cell, ACC, upload mode, re-upload, then extras.
            loc.cell = Some(cell(&mut r, protocol == 0xA0)?);
            loc.acc = Some(r.u8()? != 0);
            loc.upload_mode = Some(r.u8()?);
            loc.reupload = r.u8()? != 0;
            if protocol == 0x37 {
                loc.mileage_m = tlv_mileage(&mut r);
            } else if r.remaining() == 4 {
                // Exactly the documented optional mileage; longer tails are vendor layouts.
                loc.mileage_m = r.u32();
            }
        }
    }
    Some(Message::Location(loc))
}

/// 0x37 modules: id WORD, length BYTE, value; 0x002E is the odometer in metres.
fn tlv_mileage(r: &mut Reader) -> Option<u32> {
    while r.remaining() >= 3 {
        let id = r.u16()?;
        let len = usize::from(r.u8()?);
        let value = r.take(len)?;
        if id == 0x002E && len == 4 {
            return Some(u32::from_be_bytes(value.try_into().ok()?));
        }
    }
    None
}

/// 0x32: `78 78` form = G + LBS length + cell (+ status bytes); `79 79` (AZ735) form =
/// time + GPS length (0 = no fix fields) + fields + LBS length + cell + ... A report without
/// GPS fields carries only the serving cell, so it becomes an LBS report.
fn location_32(extended: bool, c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let fix = if extended {
        let time = binary_time(r.array()?)?;
        let gps_len = usize::from(r.u8()?);
        if gps_len == 0 {
            Err(time)
        } else {
            let mut g = Reader::new(r.take(gps_len)?);
            let info = g.u8()?;
            let lat = g.u32()?;
            let lon = g.u32()?;
            let speed = g.u8()?;
            let status = g.u16()?;
            Ok(gps_fields(time, info & 0x0F, lat, lon, speed, status))
        }
    } else {
        Ok(gps(&mut r)??)
    };
    let lbs_len = r.u8()?;
    let cell = lbs_block(&mut r, lbs_len, false, 0)?;
    Some(match fix {
        Ok(gps) => Message::Location(Location {
            gps,
            cell,
            acc: None,
            upload_mode: None,
            reupload: false,
            mileage_m: None,
        }),
        Err(time) => Message::Lbs(LbsReport {
            time,
            cells: cell.into_iter().collect(),
            timing_advance: None,
        }),
    })
}

/// The cell block behind an LBS length byte. The length counts itself in S1 (9) but not on
/// VL03 devices (8): the cell is read by its own layout and only bytes beyond both readings
/// are skipped, and only when `trailer` bytes (the fields after the block) still remain: a
/// length that would swallow them is a firmware bug and is ignored. Length 0: no cell.
fn lbs_block(r: &mut Reader, lbs_len: u8, wide: bool, trailer: usize) -> Option<Option<Cell>> {
    if lbs_len == 0 {
        return Some(None);
    }
    let start = r.pos;
    let cell = cell(r, wide)?;
    let used = r.pos - start + 1;
    let extra = usize::from(lbs_len).saturating_sub(used);
    if extra > 0 && r.remaining() >= extra + trailer {
        r.take(extra)?;
    }
    Some(Some(cell))
}

fn alarm(protocol: u8, c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let gps = gps(&mut r)?;
    // Some 0x16/0x26 firmware leaves the LBS length byte out: then exactly the 8 cell bytes
    // and the 5 status bytes follow the GPS block.
    let cell = if matches!(protocol, 0x16 | 0x26) && r.remaining() == 8 + 5 {
        Some(cell(&mut r, false)?)
    } else {
        let lbs_len = r.u8()?;
        let trailer = 5 + usize::from(matches!(protocol, 0x27 | 0xA4));
        lbs_block(&mut r, lbs_len, protocol == 0xA4, trailer)?
    };
    let (terminal_info, voltage_level, gsm_signal, alarm_code, language) = status5(&mut r)?;
    let mut mileage_m = None;
    let mut fence = None;
    match protocol {
        0x26 if r.remaining() >= 4 => mileage_m = r.u32(),
        0x27 | 0xA4 => fence = r.u8(),
        _ => {}
    }
    Some(Message::Alarm(Alarm {
        gps,
        cell,
        terminal_info,
        voltage_level,
        gsm_signal,
        alarm_code,
        language,
        fence,
        mileage_m,
    }))
}

fn status5(r: &mut Reader) -> Option<(TerminalInfo, u8, u8, u8, u8)> {
    Some((TerminalInfo(r.u8()?), r.u8()?, r.u8()?, r.u8()?, r.u8()?))
}

fn lbs_alarm(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let cell = cell(&mut r, false)?;
    let (terminal_info, voltage_level, gsm_signal, alarm_code, language) = status5(&mut r)?;
    Some(Message::Alarm(Alarm {
        gps: None,
        cell: Some(cell),
        terminal_info,
        voltage_level,
        gsm_signal,
        alarm_code,
        language,
        fence: None,
        mileage_m: None,
    }))
}

/// Serving cell + 6 neighbours of (LAC 2, CI 3, RSSI 1); all-zero neighbours are padding.
fn seven_cells(r: &mut Reader, mcc: u16, mnc: u16) -> Option<Vec<Cell>> {
    let mut cells = Vec::with_capacity(7);
    for i in 0..7 {
        let lac = u32::from(r.u16()?);
        let cell_id = u64::from(r.u24()?);
        let rssi = r.u8()?;
        if i == 0 || lac != 0 || cell_id != 0 {
            cells.push(Cell {
                mcc,
                mnc,
                lac,
                cell_id,
                rssi: Some(rssi),
            });
        }
    }
    Some(cells)
}

fn lbs(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let time = binary_time(r.array()?)?;
    let (mcc, mnc) = mcc_mnc(&mut r)?;
    let cells = seven_cells(&mut r, mcc, mnc)?;
    let timing_advance = r.u8();
    Some(Message::Lbs(LbsReport {
        time,
        cells,
        timing_advance,
    }))
}

fn wifi_2c(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let time_raw = r.array()?;
    let time = binary_time(time_raw)?;
    let (mcc, mnc) = mcc_mnc(&mut r)?;
    let cells = seven_cells(&mut r, mcc, mnc)?;
    let _timing_advance = r.u8()?;
    let count = r.u8()?;
    let aps = wifi_aps(&mut r, count)?;
    Some(Message::Wifi(WifiReport {
        time,
        time_raw,
        cells,
        aps,
    }))
}

fn wifi_aps(r: &mut Reader, count: u8) -> Option<Vec<WifiAp>> {
    let mut aps = Vec::with_capacity(usize::from(count).min(r.remaining() / 7));
    for _ in 0..count {
        let mac = r.array()?;
        let rssi = i16::from(r.u8()?);
        aps.push(WifiAp { mac, rssi });
    }
    Some(aps)
}

/// Content here starts at the AP-count byte (frame byte 2): count, protocol, BCD time, ...
fn wifi_ap_count(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let count = r.u8()?;
    r.u8()?;
    let time_raw = r.array()?;
    let time = bcd_time(time_raw)?;
    let aps = wifi_aps(&mut r, count)?;
    let cell_count = r.u8()?;
    let (mcc, mnc) = mcc_mnc(&mut r)?;
    let mut cells = Vec::with_capacity(usize::from(cell_count).min(r.remaining() / 5));
    for _ in 0..cell_count {
        let lac = u32::from(r.u16()?);
        let cell_id = u64::from(r.u16()?);
        let rssi = r.u8()?;
        cells.push(Cell {
            mcc,
            mnc,
            lac,
            cell_id,
            rssi: Some(rssi),
        });
    }
    Some(Message::Wifi(WifiReport {
        time,
        time_raw,
        cells,
        aps,
    }))
}

fn ascii(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn online_command(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let len = usize::from(r.u8()?);
    let server_flag = r.u32()?;
    let command = ascii(r.take(len.checked_sub(4)?)?);
    // An optional language word may follow; it carries nothing the hub uses.
    Some(Message::OnlineCommand(OnlineCommand {
        server_flag,
        command,
    }))
}

/// 0x15: length, flag, text, language word. Some firmware writes a length byte of 0: the
/// text is then everything up to the language word, without the NUL padding.
fn reply_15(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let len = usize::from(r.u8()?);
    let server_flag = r.u32()?;
    let text = match len.checked_sub(4) {
        Some(n) if n > 0 && n <= r.remaining() => r.take(n)?,
        _ => {
            let rest = r.rest();
            let rest = &rest[..rest.len().saturating_sub(2)];
            let end = rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            &rest[..end]
        }
    };
    Some(Message::CommandReply(CommandReply {
        server_flag,
        content: ascii(text),
    }))
}

fn reply_21(c: &[u8]) -> Option<Message> {
    let mut r = Reader::new(c);
    let server_flag = r.u32()?;
    let encoding = r.u8()?;
    let text = r.rest();
    let content = if encoding == 0x02 {
        let units: Vec<u16> = text
            .chunks_exact(2)
            .map(|p| u16::from_be_bytes([p[0], p[1]]))
            .collect();
        String::from_utf16_lossy(&units)
    } else {
        ascii(text)
    };
    Some(Message::CommandReply(CommandReply {
        server_flag,
        content,
    }))
}

fn time(c: &[u8]) -> Option<Message> {
    match c.len() {
        0 => Some(Message::TimeRequest),
        _ => Some(Message::TimeReply(binary_time(c.try_into().ok()?)?)),
    }
}

/// 0x94: sub-type + data. The `78 78` form with a bare 2-byte content is the external
/// voltage word without a sub-type; it is given sub-type 0x00, whose data is that word.
fn info(extended: bool, c: &[u8]) -> Option<Message> {
    if !extended && c.len() == 2 {
        return Some(Message::Info {
            sub_type: 0x00,
            data: c.to_vec(),
        });
    }
    let (&sub_type, data) = c.split_first()?;
    Some(Message::Info {
        sub_type,
        data: data.to_vec(),
    })
}
