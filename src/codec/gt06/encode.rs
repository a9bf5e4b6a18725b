//! Frames -> bytes for GT06, in both directions: the hub's replies and commands, and the
//! uplinks the load generator's simulated trackers send. Every layout here is the one the
//! decoder reads back, so `decode(encode(f)) == f` holds for every frame the hub builds.

use chrono::{DateTime, Datelike, Timelike, Utc};

use super::crc::crc_itu;
use super::message::*;

/// Writes the frame. A `78 78` frame whose content does not fit the 1-byte length is written
/// in the `79 79` form instead, so nothing is ever truncated at the envelope level.
pub(super) fn encode(frame: &Frame, out: &mut Vec<u8>) {
    if let Message::Wifi(w) = &frame.message {
        if matches!(frame.protocol, 0x69 | 0x17) {
            wifi_ap_count(frame.protocol, w, out);
            return;
        }
    }
    let start = out.len();
    // Reserve the 2-byte length of the long form; the short form removes one byte afterwards.
    out.extend_from_slice(&[0x79, 0x79, 0, 0, frame.protocol]);
    content(frame, out);
    let serial = frame.serial.unwrap_or(0);
    out.extend_from_slice(&serial.to_be_bytes());
    // length = protocol + content + serial + CRC
    let len = out.len() - (start + 4) + 2;
    if !frame.extended && len <= usize::from(u8::MAX) {
        out.remove(start + 2);
        out[start] = 0x78;
        out[start + 1] = 0x78;
        out[start + 2] = len as u8;
    } else {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }
    let crc = crc_itu(&out[start + 2..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(&[0x0D, 0x0A]);
}

fn content(frame: &Frame, out: &mut Vec<u8>) {
    match &frame.message {
        Message::Login(l) => login(l, out),
        Message::Heartbeat(h) => heartbeat(frame.protocol, h, out),
        Message::Location(l) => location(frame.protocol, l, out),
        Message::Alarm(a) => alarm(frame.protocol, a, out),
        Message::Lbs(l) => lbs(frame.protocol, l, out),
        Message::Wifi(w) => wifi_2c(w, out),
        Message::CommandReply(c) => command_reply(frame.protocol, c, out),
        Message::OnlineCommand(c) => {
            let text = text_prefix(&c.command, MAX_COMMAND_TEXT);
            out.push((4 + text.len()) as u8);
            out.extend_from_slice(&c.server_flag.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        Message::TimeRequest | Message::Ack => {}
        Message::TimeReply(t) => out.extend_from_slice(&binary_time(t)),
        Message::Info { sub_type, data } => {
            out.push(*sub_type);
            out.extend_from_slice(data);
        }
        Message::Unknown { content } => out.extend_from_slice(content),
    }
}

/// Longest command or 0x15 reply text: its length byte counts 4 flag bytes plus the text.
pub const MAX_COMMAND_TEXT: usize = 251;

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn text_prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// YY MM DD hh mm ss, binary, year - 2000 (years outside 2000..=2255 are clamped).
pub(super) fn binary_time(t: &DateTime<Utc>) -> [u8; 6] {
    [
        (t.year() - 2000).clamp(0, 255) as u8,
        t.month() as u8,
        t.day() as u8,
        t.hour() as u8,
        t.minute() as u8,
        t.second() as u8,
    ]
}

fn bcd(v: u32) -> u8 {
    let v = v % 100;
    (((v / 10) << 4) | (v % 10)) as u8
}

fn login(l: &Login, out: &mut Vec<u8>) {
    // 16 BCD digits: the IMEI right-aligned behind zero padding (only the last 16 digits
    // of a longer id fit).
    let digits = l.imei.as_str().as_bytes();
    let mut nibbles = [0u8; 16];
    let take = digits.len().min(16);
    for (slot, d) in nibbles[16 - take..]
        .iter_mut()
        .zip(&digits[digits.len() - take..])
    {
        *slot = d - b'0';
    }
    for pair in nibbles.chunks_exact(2) {
        out.push(pair[0] << 4 | pair[1]);
    }
    if l.type_id.is_some() || l.timezone_minutes.is_some() {
        out.extend_from_slice(&l.type_id.unwrap_or(0).to_be_bytes());
    }
    if let Some(minutes) = l.timezone_minutes {
        let abs = minutes.unsigned_abs();
        let value = (abs / 60 * 100 + abs % 60).min(0x0FFF);
        let mut word = value << 4 | u16::from(l.language.unwrap_or(0) & 0x03);
        if minutes < 0 {
            word |= 0x0008;
        }
        out.extend_from_slice(&word.to_be_bytes());
    }
}

fn heartbeat(protocol: u8, h: &Heartbeat, out: &mut Vec<u8>) {
    out.push(h.terminal_info.0);
    if protocol == 0x23 {
        out.extend_from_slice(&centi(h.battery_volts.unwrap_or(0.0)).to_be_bytes());
    } else {
        out.push(h.voltage_level.unwrap_or(0));
    }
    out.extend_from_slice(&[h.gsm_signal, h.alarm_code, h.language]);
}

fn centi(volts: f64) -> u16 {
    (volts * 100.0).round().clamp(0.0, f64::from(u16::MAX)) as u16
}

/// The 18-byte GPS block; `None` writes zeros (no fix), which the decoder reads as no GPS.
fn gps(g: Option<&Gps>, out: &mut Vec<u8>) {
    let Some(g) = g else {
        out.extend_from_slice(&[0; 18]);
        return;
    };
    out.extend_from_slice(&binary_time(&g.time));
    out.push(0xC0 | (g.satellites & 0x0F));
    out.extend_from_slice(&degrees_raw(g.latitude).to_be_bytes());
    out.extend_from_slice(&degrees_raw(g.longitude).to_be_bytes());
    out.push(g.speed_kmh);
    out.extend_from_slice(&course_status(g).to_be_bytes());
}

fn degrees_raw(deg: f64) -> u32 {
    (deg.abs() * 1_800_000.0)
        .round()
        .clamp(0.0, f64::from(u32::MAX)) as u32
}

fn course_status(g: &Gps) -> u16 {
    let mut w = g.course & 0x03FF;
    if !g.latitude.is_sign_negative() || g.latitude == 0.0 {
        w |= 0x0400;
    }
    if g.longitude < 0.0 {
        w |= 0x0800;
    }
    if g.positioned {
        w |= 0x1000;
    }
    if g.differential {
        w |= 0x2000;
    }
    if let Some(acc) = g.acc {
        w |= 0x4000;
        if acc {
            w |= 0x8000;
        }
    }
    w
}

fn mcc_mnc(c: &Cell, out: &mut Vec<u8>) {
    let mcc = c.mcc & 0x7FFF;
    if c.mnc > 0xFF {
        out.extend_from_slice(&(mcc | 0x8000).to_be_bytes());
        out.extend_from_slice(&c.mnc.to_be_bytes());
    } else {
        out.extend_from_slice(&mcc.to_be_bytes());
        out.push(c.mnc as u8);
    }
}

/// MCC, MNC, then LAC 2 + CI 3 (or LAC 4 + CI 8 for the 4G types).
fn cell(c: &Cell, wide: bool, out: &mut Vec<u8>) {
    mcc_mnc(c, out);
    if wide {
        out.extend_from_slice(&c.lac.to_be_bytes());
        out.extend_from_slice(&c.cell_id.to_be_bytes());
    } else {
        out.extend_from_slice(&(c.lac as u16).to_be_bytes());
        out.extend_from_slice(&(c.cell_id as u32).to_be_bytes()[1..]);
    }
}

fn location(protocol: u8, l: &Location, out: &mut Vec<u8>) {
    gps(Some(&l.gps), out);
    let serving = l.cell.unwrap_or_default();
    match protocol {
        0x10 => {}
        0x11 => {
            out.extend_from_slice(&(serving.mcc & 0x7FFF).to_be_bytes());
            out.extend_from_slice(&serving.mnc.to_be_bytes());
            out.extend_from_slice(&(serving.lac as u16).to_be_bytes());
            out.extend_from_slice(&(serving.cell_id as u32).to_be_bytes());
        }
        0x12 => cell(&serving, false, out),
        0x32 => {
            out.push(9);
            cell(&serving, false, out);
        }
        _ => {
            cell(&serving, protocol == 0xA0, out);
            out.push(u8::from(l.acc.unwrap_or(false)));
            out.push(l.upload_mode.unwrap_or(0));
            out.push(u8::from(l.reupload));
            if let Some(m) = l.mileage_m {
                if protocol == 0x37 {
                    out.extend_from_slice(&[0x00, 0x2E, 4]);
                }
                out.extend_from_slice(&m.to_be_bytes());
            }
        }
    }
}

fn alarm(protocol: u8, a: &Alarm, out: &mut Vec<u8>) {
    let wide = protocol == 0xA4;
    if protocol == 0x19 {
        cell(&a.cell.unwrap_or_default(), false, out);
    } else {
        gps(a.gps.as_ref(), out);
        match &a.cell {
            Some(c) => {
                // The length counts itself, as in S1's samples.
                let at = out.len();
                out.push(0);
                cell(c, wide, out);
                out[at] = (out.len() - at) as u8;
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&[
        a.terminal_info.0,
        a.voltage_level,
        a.gsm_signal,
        a.alarm_code,
        a.language,
    ]);
    match protocol {
        0x26 => {
            if let Some(m) = a.mileage_m {
                out.extend_from_slice(&m.to_be_bytes());
            }
        }
        0x27 | 0xA4 => {
            if let Some(f) = a.fence {
                out.push(f);
            }
        }
        _ => {}
    }
}

/// Serving cell and up to 6 neighbours as (LAC 2, CI 3, RSSI 1), zero-filled to 7.
fn seven_cells(cells: &[Cell], out: &mut Vec<u8>) {
    let serving = cells.first().copied().unwrap_or_default();
    mcc_mnc(&serving, out);
    for i in 0..7 {
        let c = cells.get(i).copied().unwrap_or_default();
        out.extend_from_slice(&(c.lac as u16).to_be_bytes());
        out.extend_from_slice(&(c.cell_id as u32).to_be_bytes()[1..]);
        out.push(c.rssi.unwrap_or(0));
    }
}

fn lbs(protocol: u8, l: &LbsReport, out: &mut Vec<u8>) {
    if protocol == 0x32 {
        // AZ735 long form without GPS fields.
        out.extend_from_slice(&binary_time(&l.time));
        out.push(0);
        let at = out.len();
        out.push(0);
        cell(&l.cells.first().copied().unwrap_or_default(), false, out);
        out[at] = (out.len() - at) as u8;
        return;
    }
    out.extend_from_slice(&binary_time(&l.time));
    seven_cells(&l.cells, out);
    out.push(l.timing_advance.unwrap_or(0));
    // Language word: English.
    out.extend_from_slice(&[0x00, 0x02]);
}

fn wifi_2c(w: &WifiReport, out: &mut Vec<u8>) {
    out.extend_from_slice(&binary_time(&w.time));
    seven_cells(&w.cells, out);
    out.push(0); // timing advance: not carried by WifiReport
    let count = w.aps.len().min(usize::from(u8::MAX));
    out.push(count as u8);
    for ap in &w.aps[..count] {
        out.extend_from_slice(&ap.mac);
        out.push(ap.rssi as u8);
    }
}

/// `78 78 <AP count> <proto> <BCD time> <APs> <cell count> <MCC MNC> <cells> 0d 0a`: no
/// serial, no CRC (ZhongXun form).
fn wifi_ap_count(protocol: u8, w: &WifiReport, out: &mut Vec<u8>) {
    let aps = &w.aps[..w.aps.len().min(usize::from(u8::MAX))];
    let cells = &w.cells[..w.cells.len().min(usize::from(u8::MAX))];
    out.extend_from_slice(&[0x78, 0x78, aps.len() as u8, protocol]);
    let t = &w.time;
    out.extend_from_slice(&[
        bcd((t.year() - 2000).clamp(0, 99) as u32),
        bcd(t.month()),
        bcd(t.day()),
        bcd(t.hour()),
        bcd(t.minute()),
        bcd(t.second()),
    ]);
    for ap in aps {
        out.extend_from_slice(&ap.mac);
        out.push(ap.rssi as u8);
    }
    out.push(cells.len() as u8);
    let serving = cells.first().copied().unwrap_or_default();
    out.extend_from_slice(&(serving.mcc & 0x7FFF).to_be_bytes());
    out.push(serving.mnc as u8);
    for c in cells {
        out.extend_from_slice(&(c.lac as u16).to_be_bytes());
        out.extend_from_slice(&(c.cell_id as u16).to_be_bytes());
        out.push(c.rssi.unwrap_or(0));
    }
    out.extend_from_slice(&[0x0D, 0x0A]);
}

fn command_reply(protocol: u8, c: &CommandReply, out: &mut Vec<u8>) {
    if protocol == 0x15 {
        let text = text_prefix(&c.content, MAX_COMMAND_TEXT);
        out.push((4 + text.len()) as u8);
        out.extend_from_slice(&c.server_flag.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(&[0x00, 0x02]);
        return;
    }
    out.extend_from_slice(&c.server_flag.to_be_bytes());
    if c.content.is_ascii() {
        out.push(0x01);
        out.extend_from_slice(c.content.as_bytes());
    } else {
        out.push(0x02);
        for unit in c.content.encode_utf16() {
            out.extend_from_slice(&unit.to_be_bytes());
        }
    }
}
