//! [`Message`] -> body bytes -> escaped frame. The platform-to-terminal messages are what
//! the hub sends; the terminal-to-platform ones are written too, for the load generator
//! and for round-trip tests. Text goes out as GBK; a string that GBK cannot represent, or
//! that does not fit its field, is an [`EncodeError`] rather than silently altered.

use super::decode::register_widths;
use super::frame;
use super::header::{self, Header, Package, MAX_BODY_LEN};
use super::message::*;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("body of {0} bytes exceeds {MAX_BODY_LEN}; use encode_split")]
    BodyTooLong(usize),
    #[error("{field}: {len} bytes do not fit in {max}")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{0}: text has characters GBK cannot encode")]
    NotGbk(&'static str),
    #[error("{0} has more items than its count field holds")]
    TooMany(&'static str),
    /// Fragments are sent with [`encode`] and a header carrying `package`; `Unknown` and
    /// `Invalid` have no message id of their own.
    #[error("this message has no body encoding of its own")]
    NotEncodable,
}

type E<T> = Result<T, EncodeError>;

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn time(&mut self, t: BcdTime) {
        self.0.extend_from_slice(&t.0);
    }
    fn text(&mut self, field: &'static str, s: &str) -> E<()> {
        let b = gbk(field, s)?;
        self.bytes(&b);
        Ok(())
    }
    /// Zero-padded fixed width.
    fn fixed(&mut self, field: &'static str, s: &str, width: usize) -> E<()> {
        let b = gbk(field, s)?;
        if b.len() > width {
            return Err(EncodeError::FieldTooLong {
                field,
                len: b.len(),
                max: width,
            });
        }
        self.bytes(&b);
        self.0.extend(std::iter::repeat_n(0u8, width - b.len()));
        Ok(())
    }
    /// BYTE length + text.
    fn short(&mut self, field: &'static str, s: &str) -> E<()> {
        let b = gbk(field, s)?;
        let len = u8::try_from(b.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: b.len(),
            max: 255,
        })?;
        self.u8(len);
        self.bytes(&b);
        Ok(())
    }
}

fn gbk(field: &'static str, s: &str) -> E<Vec<u8>> {
    let (b, _, unmappable) = encoding_rs::GBK.encode(s);
    if unmappable {
        return Err(EncodeError::NotGbk(field));
    }
    Ok(b.into_owned())
}

/// Encodes one packet: header (properties computed), body, XOR, escaping, flags.
/// A body over [`MAX_BODY_LEN`] is an error: split it with [`encode_split`].
/// [`Message::Fragment`] is written as the raw slice for `header.package`.
pub fn encode(header: &Header, message: &Message) -> E<Vec<u8>> {
    let body = match message {
        Message::Fragment(b) => b.clone(),
        m => encode_body(header.is_2019(), m)?,
    };
    packet(header, &body)
}

fn packet(header: &Header, body: &[u8]) -> E<Vec<u8>> {
    if body.len() > MAX_BODY_LEN {
        return Err(EncodeError::BodyTooLong(body.len()));
    }
    let mut p = Vec::with_capacity(header.len() + body.len() + 1);
    header::write(header, body.len(), &mut p);
    p.extend_from_slice(body);
    p.push(frame::xor(&p));
    let mut out = Vec::with_capacity(p.len() + 8);
    frame::wrap(&p, &mut out);
    Ok(out)
}

/// Encodes `message` as one packet, or as subpackages of at most `max_body` bytes each
/// (1..=[`MAX_BODY_LEN`]; go-jt808 uses 1000) when the body is longer. Subpackages take
/// consecutive serials from `header.serial`. Returns the frames in order.
pub fn encode_split(header: &Header, message: &Message, max_body: usize) -> E<Vec<Vec<u8>>> {
    let max_body = max_body.clamp(1, MAX_BODY_LEN);
    let body = encode_body(header.is_2019(), message)?;
    if body.len() <= max_body {
        let mut h = *header;
        h.package = None;
        return Ok(vec![packet(&h, &body)?]);
    }
    let chunks: Vec<&[u8]> = body.chunks(max_body).collect();
    let total = u16::try_from(chunks.len()).map_err(|_| EncodeError::TooMany("subpackages"))?;
    let mut out = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let mut h = *header;
        h.serial = header.serial.wrapping_add(i as u16);
        h.package = Some(Package {
            total,
            index: i as u16 + 1,
        });
        out.push(packet(&h, chunk)?);
    }
    Ok(out)
}

/// One packet around a body the caller already wrote (messages the codec has no type for,
/// such as the 0x8800 multimedia upload answer).
pub fn encode_raw(header: &Header, body: &[u8]) -> E<Vec<u8>> {
    packet(header, body)
}

/// A 0x8001 platform general response to the packet whose header is `to`.
pub fn encode_general_response(to: &Header, serial: u16, result: u8) -> Vec<u8> {
    let h = Header::reply_to(to, 0x8001, serial);
    let body = [
        (to.serial >> 8) as u8,
        to.serial as u8,
        (to.msg_id >> 8) as u8,
        to.msg_id as u8,
        result,
    ];
    // A 5-byte body always fits.
    packet(&h, &body).unwrap_or_default()
}

/// The body bytes of `message`; `v2019` selects the 2019 layouts (0x0100, 0x0102, 0x0107,
/// 0x8003, 0x8300).
pub fn encode_body(v2019: bool, message: &Message) -> E<Vec<u8>> {
    let mut w = W(Vec::with_capacity(64));
    match message {
        Message::TerminalResponse(g) | Message::PlatformResponse(g) => {
            w.u16(g.reply_serial);
            w.u16(g.reply_id);
            w.u8(g.result);
        }
        Message::Heartbeat
        | Message::Logout
        | Message::QueryAllParams
        | Message::QueryAttributes
        | Message::LocationQuery
        | Message::QueryAvAttributes => {}
        Message::Register(r) => {
            let (maker, model, id) = register_widths(r.layout);
            w.u16(r.province);
            w.u16(r.city);
            w.fixed("manufacturer", &r.manufacturer, maker)?;
            w.fixed("model", &r.model, model)?;
            w.fixed("terminal_id", &r.terminal_id, id)?;
            w.u8(r.plate_color);
            let plate = gbk("plate", &r.plate)?;
            // A 2011 body of 37 bytes or more reads back as 2013 (the layouts are told
            // apart by length only), so its plate must stay under 12 bytes.
            if r.layout == RegisterLayout::V2011 && plate.len() > 11 {
                return Err(EncodeError::FieldTooLong {
                    field: "plate (2011 layout)",
                    len: plate.len(),
                    max: 11,
                });
            }
            w.bytes(&plate);
        }
        Message::Auth(a) => {
            if v2019 {
                w.short("auth_code", &a.auth_code)?;
                w.fixed("imei", a.imei.as_deref().unwrap_or(""), 15)?;
                w.fixed(
                    "software_version",
                    a.software_version.as_deref().unwrap_or(""),
                    20,
                )?;
            } else {
                w.text("auth_code", &a.auth_code)?;
            }
        }
        Message::ParamsReply(p) => {
            w.u16(p.reply_serial);
            params(&mut w, &p.params)?;
        }
        Message::Attributes(a) => {
            let (maker, model, id) = if v2019 { (11, 30, 30) } else { (5, 20, 7) };
            w.u16(a.terminal_type);
            w.fixed("manufacturer", &a.manufacturer, maker)?;
            w.fixed("model", &a.model, model)?;
            w.fixed("terminal_id", &a.terminal_id, id)?;
            w.bytes(&bcd(&a.iccid, 10, "iccid")?);
            w.short("hardware_version", &a.hardware_version)?;
            w.short("firmware_version", &a.firmware_version)?;
            w.u8(a.gnss);
            w.u8(a.comm);
        }
        Message::Location(l) => location(&mut w, l)?,
        Message::LocationReply {
            reply_serial,
            location: l,
        } => {
            w.u16(*reply_serial);
            location(&mut w, l)?;
        }
        Message::BatchLocation(b) => {
            let n = u16::try_from(b.items.len()).map_err(|_| EncodeError::TooMany("0x0704"))?;
            w.u16(n);
            w.u8(b.kind);
            for l in &b.items {
                let mut inner = W(Vec::with_capacity(64));
                location(&mut inner, l)?;
                let len = u16::try_from(inner.0.len())
                    .map_err(|_| EncodeError::TooMany("0x0704 item"))?;
                w.u16(len);
                w.bytes(&inner.0);
            }
        }
        Message::MediaEvent(e) => media_event(&mut w, e),
        Message::MediaData(m) => {
            media_event(&mut w, &m.event);
            basic(&mut w, &m.location);
            w.bytes(&m.data);
        }
        Message::Transparent { kind, data } => {
            w.u8(*kind);
            w.bytes(data);
        }
        Message::AvAttributes(a) => {
            w.u8(a.audio_codec);
            w.u8(a.audio_channels);
            w.u8(a.sample_rate);
            w.u8(a.sample_bits);
            w.u16(a.audio_frame_len);
            w.u8(u8::from(a.audio_output));
            w.u8(a.video_codec);
            w.u8(a.max_audio_channels);
            w.u8(a.max_video_channels);
        }
        Message::PassengerFlow(p) => {
            w.time(p.start);
            w.time(p.end);
            w.u16(p.boarding);
            w.u16(p.alighting);
        }
        Message::ResourceList(l) => {
            w.u16(l.reply_serial);
            let n = u32::try_from(l.items.len()).map_err(|_| EncodeError::TooMany("0x1205"))?;
            w.u32(n);
            for i in &l.items {
                w.u8(i.channel);
                w.time(i.start);
                w.time(i.end);
                w.u64(i.alarm);
                w.u8(i.av_type);
                w.u8(i.stream);
                w.u8(i.storage);
                w.u32(i.size);
            }
        }
        Message::FileUploadResult {
            reply_serial,
            result,
        } => {
            w.u16(*reply_serial);
            w.u8(*result);
        }
        Message::ResendRequest(r) => {
            w.u16(r.original_serial);
            if v2019 {
                let n =
                    u16::try_from(r.indexes.len()).map_err(|_| EncodeError::TooMany("0x8003"))?;
                w.u16(n);
            } else {
                let n =
                    u8::try_from(r.indexes.len()).map_err(|_| EncodeError::TooMany("0x8003"))?;
                w.u8(n);
            }
            for i in &r.indexes {
                w.u16(*i);
            }
        }
        Message::RegisterResponse(r) => {
            w.u16(r.reply_serial);
            w.u8(r.result);
            if r.result == 0 {
                w.text("auth_code", r.auth_code.as_deref().unwrap_or(""))?;
            }
        }
        Message::SetParams(p) => params(&mut w, p)?,
        Message::TerminalControl { command, params } => {
            w.u8(*command);
            w.text("params", params)?;
        }
        Message::QueryParams(ids) => {
            let n = u8::try_from(ids.len()).map_err(|_| EncodeError::TooMany("0x8106"))?;
            w.u8(n);
            for id in ids {
                w.u32(*id);
            }
        }
        Message::Text(t) => {
            w.u8(t.flag);
            if v2019 {
                w.u8(t.text_type.unwrap_or(1));
            }
            w.text("text", &t.text)?;
        }
        Message::CameraShoot(c) => {
            w.u8(c.channel);
            w.u16(c.command);
            w.u16(c.interval);
            for b in [
                c.save,
                c.resolution,
                c.quality,
                c.brightness,
                c.contrast,
                c.saturation,
                c.chroma,
            ] {
                w.u8(b);
            }
        }
        Message::LiveRequest(l) => {
            w.short("server", &l.server)?;
            w.u16(l.tcp_port);
            w.u16(l.udp_port);
            w.u8(l.channel);
            w.u8(l.data_type);
            w.u8(l.stream);
        }
        Message::LiveControl(c) => {
            w.u8(c.channel);
            w.u8(c.command);
            w.u8(c.close_kind);
            w.u8(c.stream);
        }
        Message::PlaybackRequest(p) => {
            w.short("server", &p.server)?;
            w.u16(p.tcp_port);
            w.u16(p.udp_port);
            for b in [p.channel, p.av_type, p.stream, p.storage, p.mode, p.speed] {
                w.u8(b);
            }
            w.time(p.start);
            w.time(p.end);
        }
        Message::PlaybackControl(p) => {
            w.u8(p.channel);
            w.u8(p.control);
            w.u8(p.speed);
            w.time(p.position);
        }
        Message::ResourceQuery(q) => {
            w.u8(q.channel);
            w.time(q.start);
            w.time(q.end);
            w.u64(q.alarm);
            w.u8(q.av_type);
            w.u8(q.stream);
            w.u8(q.storage);
        }
        Message::FileUpload(f) => {
            w.short("server", &f.server)?;
            w.u16(f.port);
            w.short("user", &f.user)?;
            w.short("password", &f.password)?;
            w.short("path", &f.path)?;
            w.u8(f.channel);
            w.time(f.start);
            w.time(f.end);
            w.u64(f.alarm);
            for b in [f.av_type, f.stream, f.storage, f.conditions] {
                w.u8(b);
            }
        }
        Message::FileUploadControl {
            reply_serial,
            control,
        } => {
            w.u16(*reply_serial);
            w.u8(*control);
        }
        Message::AttachmentUpload(a) => {
            w.short("server", &a.server)?;
            w.u16(a.tcp_port);
            w.u16(a.udp_port);
            label(&mut w, &a.label);
            w.bytes(&a.alarm_number);
            w.bytes(&a.reserved);
        }
        Message::Fragment(_) | Message::Unknown(_) | Message::Invalid { .. } => {
            return Err(EncodeError::NotEncodable)
        }
    }
    Ok(w.0)
}

fn bcd(digits: &str, width: usize, field: &'static str) -> E<Vec<u8>> {
    let nibbles: Vec<u8> = digits
        .chars()
        .map(|c| c.to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()
        .ok_or(EncodeError::NotGbk(field))?;
    if nibbles.len() > width * 2 {
        return Err(EncodeError::FieldTooLong {
            field,
            len: nibbles.len(),
            max: width * 2,
        });
    }
    let mut padded = vec![0u8; width * 2 - nibbles.len()];
    padded.extend(nibbles);
    Ok(padded.chunks(2).map(|p| (p[0] << 4) | p[1]).collect())
}

fn params(w: &mut W, p: &[Param]) -> E<()> {
    let n = u8::try_from(p.len()).map_err(|_| EncodeError::TooMany("parameter list"))?;
    w.u8(n);
    for item in p {
        w.u32(item.id);
        let value = match &item.value {
            ParamValue::Byte(v) => vec![*v],
            ParamValue::Word(v) => v.to_be_bytes().to_vec(),
            ParamValue::Dword(v) => v.to_be_bytes().to_vec(),
            ParamValue::Text(s) => gbk("parameter", s)?,
            ParamValue::Bytes(b) => b.clone(),
        };
        let len = u8::try_from(value.len()).map_err(|_| EncodeError::FieldTooLong {
            field: "parameter",
            len: value.len(),
            max: 255,
        })?;
        w.u8(len);
        w.bytes(&value);
    }
    Ok(())
}

fn basic(w: &mut W, b: &BasicLocation) {
    w.u32(b.alarm.0);
    w.u32(b.status.0);
    w.u32(b.latitude_e6);
    w.u32(b.longitude_e6);
    w.u16(b.altitude_m);
    w.u16(b.speed_dkmh);
    w.u16(b.course);
    w.time(b.time);
}

fn location(w: &mut W, l: &Location) -> E<()> {
    basic(w, &l.basic);
    for i in &l.items {
        item(w, i)?;
    }
    w.bytes(&l.trailing);
    Ok(())
}

/// One additional-information item as on the wire: id, length, value.
pub fn encode_item(i: &LocationItem) -> E<Vec<u8>> {
    let mut w = W(Vec::with_capacity(16));
    item(&mut w, i)?;
    Ok(w.0)
}

fn item(w: &mut W, i: &LocationItem) -> E<()> {
    use LocationItem as I;
    let mut v = W(Vec::with_capacity(8));
    match i {
        I::Mileage(x) | I::VideoAlarms(x) | I::VideoSignalLoss(x) | I::VideoOcclusion(x) => {
            v.u32(*x)
        }
        I::ExtendedSignals(x) | I::Analog(x) => v.u32(*x),
        I::Fuel(x) | I::RecorderSpeed(x) | I::AlarmEventId(x) | I::StorageFault(x) => v.u16(*x),
        I::IoStatus(x) => v.u16(*x),
        I::TyrePressure(b) => v.bytes(b),
        I::CompartmentTemperature(t) => v.u16(*t as u16),
        I::Overspeed {
            location_type,
            area_id,
        } => {
            v.u8(*location_type);
            if let Some(id) = area_id {
                v.u32(*id);
            }
        }
        I::AreaAlarm {
            location_type,
            area_id,
            direction,
        } => {
            v.u8(*location_type);
            v.u32(*area_id);
            v.u8(*direction);
        }
        I::SectionTime {
            section_id,
            seconds,
            result,
        } => {
            v.u32(*section_id);
            v.u16(*seconds);
            v.u8(*result);
        }
        I::AbnormalDriving { behaviour, fatigue } => {
            v.u16(*behaviour);
            v.u8(*fatigue);
        }
        I::Signal(x) | I::Satellites(x) => v.u8(*x),
        I::Adas(a) => {
            v.u32(a.alarm_id);
            for b in [
                a.flag,
                a.kind,
                a.level,
                a.front_speed_kmh,
                a.front_distance,
                a.departure,
                a.road_sign_type,
                a.road_sign_value,
            ] {
                v.u8(b);
            }
            common(&mut v, &a.common);
        }
        I::Dsm(d) => {
            v.u32(d.alarm_id);
            for b in [d.flag, d.kind, d.level, d.fatigue] {
                v.u8(b);
            }
            v.bytes(&d.reserved);
            common(&mut v, &d.common);
        }
        I::Tpms(t) => {
            v.u32(t.alarm_id);
            v.u8(t.flag);
            common(&mut v, &t.common);
            let n = u8::try_from(t.tyres.len()).map_err(|_| EncodeError::TooMany("0x66"))?;
            v.u8(n);
            for ty in &t.tyres {
                v.u8(ty.position);
                v.u16(ty.alarms);
                v.u16(ty.pressure);
                v.u16(ty.temperature);
                v.u16(ty.battery);
            }
        }
        I::Bsd(b) => {
            v.u32(b.alarm_id);
            v.u8(b.flag);
            v.u8(b.kind);
            common(&mut v, &b.common);
        }
        I::Raw { value, .. } => v.bytes(value),
    }
    let len = u8::try_from(v.0.len()).map_err(|_| EncodeError::FieldTooLong {
        field: "location item",
        len: v.0.len(),
        max: 255,
    })?;
    w.u8(i.id());
    w.u8(len);
    w.bytes(&v.0);
    Ok(())
}

fn common(w: &mut W, c: &SafetyCommon) {
    w.u8(c.speed_kmh);
    w.u16(c.altitude_m);
    w.u32(c.latitude_e6);
    w.u32(c.longitude_e6);
    w.time(c.time);
    w.u16(c.vehicle_status);
    label(w, &c.label);
}

fn label(w: &mut W, l: &AlarmLabel) {
    w.bytes(&l.terminal_id);
    w.time(l.time);
    w.u8(l.seq);
    w.u8(l.attachments);
    w.u8(l.reserved);
}

fn media_event(w: &mut W, e: &MediaEvent) {
    w.u32(e.media_id);
    w.u8(e.media_type);
    w.u8(e.format);
    w.u8(e.event);
    w.u8(e.channel);
}
