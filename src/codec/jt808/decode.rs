//! Body bytes -> [`Message`]. Every read goes through [`Reader`], which checks bounds, so a
//! short or lying body ends as [`Message::Invalid`] with a reason instead of a panic. Counts
//! that size a list are checked against the bytes left before the list is allocated.

use super::header::Header;
use super::message::*;

/// Bounds-checked big-endian cursor over a body.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

type R<T> = Result<T, &'static str>;

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }
    fn left(&self) -> usize {
        self.buf.len() - self.at
    }
    fn take(&mut self, n: usize) -> R<&'a [u8]> {
        if self.left() < n {
            return Err("body too short");
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.buf[self.at..];
        self.at = self.buf.len();
        s
    }
    fn array<const N: usize>(&mut self) -> R<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> R<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> R<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> R<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> R<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn time(&mut self) -> R<BcdTime> {
        Ok(BcdTime(self.array()?))
    }
    /// Fixed-width text, cut at the first NUL.
    fn fixed_text(&mut self, n: usize) -> R<String> {
        Ok(text(self.take(n)?))
    }
    /// BYTE length + GBK text.
    fn short_text(&mut self) -> R<String> {
        let n = usize::from(self.u8()?);
        Ok(gbk(self.take(n)?))
    }
    fn end(&self) -> R<()> {
        if self.left() == 0 {
            Ok(())
        } else {
            Err("unexpected bytes after the body")
        }
    }
}

/// GBK text (ASCII is a subset); undecodable bytes become U+FFFD.
pub(super) fn gbk(b: &[u8]) -> String {
    let (s, _) = encoding_rs::GBK.decode_without_bom_handling(b);
    s.into_owned()
}

/// Fixed-width GBK field: up to the first NUL.
fn text(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    gbk(&b[..end])
}

/// Decodes a whole (reassembled) body of the message `header.msg_id`. The header decides
/// the 2019 layouts (0x0100, 0x0102, 0x0107, 0x8003, 0x8300).
pub fn decode_body(header: &Header, body: &[u8]) -> Message {
    match body_of(header, body) {
        Ok(m) => m,
        Err(reason) => Message::Invalid {
            body: body.to_vec(),
            reason,
        },
    }
}

fn empty(body: &[u8], m: Message) -> R<Message> {
    if body.is_empty() {
        Ok(m)
    } else {
        Err("body must be empty")
    }
}

fn body_of(h: &Header, body: &[u8]) -> R<Message> {
    let v2019 = h.is_2019();
    let mut r = Reader::new(body);
    let m = match h.msg_id {
        0x0001 => Message::TerminalResponse(general(&mut r)?),
        // traccar reads 3 vendor bytes after a heartbeat: accept any body.
        0x0002 => Message::Heartbeat,
        0x0003 => Message::Logout,
        0x0100 => Message::Register(register(&mut r, v2019)?),
        0x0102 => Message::Auth(auth(&mut r, v2019)?),
        0x0104 => {
            let reply_serial = r.u16()?;
            let params = params(&mut r)?;
            Message::ParamsReply(ParamsReply {
                reply_serial,
                params,
            })
        }
        0x0107 => Message::Attributes(attributes(&mut r, v2019)?),
        0x0200 => return decode_location(body).map(Message::Location),
        0x0201 => {
            let reply_serial = r.u16()?;
            let location = decode_location(r.rest())?;
            Message::LocationReply {
                reply_serial,
                location,
            }
        }
        0x0704 => Message::BatchLocation(batch(&mut r)?),
        0x0800 => {
            let m = Message::MediaEvent(media_event(&mut r)?);
            r.end()?;
            m
        }
        0x0801 => {
            let event = media_event(&mut r)?;
            let location = basic(&mut r)?;
            Message::MediaData(MediaData {
                event,
                location,
                data: r.rest().to_vec(),
            })
        }
        0x0900 => Message::Transparent {
            kind: r.u8()?,
            data: r.rest().to_vec(),
        },
        0x1003 => {
            let m = Message::AvAttributes(AvAttributes {
                audio_codec: r.u8()?,
                audio_channels: r.u8()?,
                sample_rate: r.u8()?,
                sample_bits: r.u8()?,
                audio_frame_len: r.u16()?,
                audio_output: r.u8()? != 0,
                video_codec: r.u8()?,
                max_audio_channels: r.u8()?,
                max_video_channels: r.u8()?,
            });
            r.end()?;
            m
        }
        0x1005 => {
            let m = Message::PassengerFlow(PassengerFlow {
                start: r.time()?,
                end: r.time()?,
                boarding: r.u16()?,
                alighting: r.u16()?,
            });
            r.end()?;
            m
        }
        0x1205 => {
            let reply_serial = r.u16()?;
            let n = r.u32()? as usize;
            if n.checked_mul(28) != Some(r.left()) {
                return Err("resource count does not match the body length");
            }
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                items.push(AvResource {
                    channel: r.u8()?,
                    start: r.time()?,
                    end: r.time()?,
                    alarm: r.u64()?,
                    av_type: r.u8()?,
                    stream: r.u8()?,
                    storage: r.u8()?,
                    size: r.u32()?,
                });
            }
            Message::ResourceList(ResourceList {
                reply_serial,
                items,
            })
        }
        0x1206 => {
            let m = Message::FileUploadResult {
                reply_serial: r.u16()?,
                result: r.u8()?,
            };
            r.end()?;
            m
        }
        0x8001 => Message::PlatformResponse(general(&mut r)?),
        0x8003 => {
            let original_serial = r.u16()?;
            let n = if v2019 {
                usize::from(r.u16()?)
            } else {
                usize::from(r.u8()?)
            };
            if n * 2 != r.left() {
                return Err("package count does not match the body length");
            }
            let mut indexes = Vec::with_capacity(n);
            for _ in 0..n {
                indexes.push(r.u16()?);
            }
            Message::ResendRequest(ResendRequest {
                original_serial,
                indexes,
            })
        }
        0x8100 => {
            let reply_serial = r.u16()?;
            let result = r.u8()?;
            let auth_code = (result == 0).then(|| gbk(r.rest()));
            Message::RegisterResponse(RegisterResponse {
                reply_serial,
                result,
                auth_code,
            })
        }
        0x8103 => {
            let n = usize::from(r.u8()?);
            let p = param_items(&mut r, n)?;
            Message::SetParams(p)
        }
        0x8104 => empty(body, Message::QueryAllParams)?,
        0x8105 => Message::TerminalControl {
            command: r.u8()?,
            params: gbk(r.rest()),
        },
        0x8106 => {
            let n = usize::from(r.u8()?);
            if n * 4 != r.left() {
                return Err("parameter count does not match the body length");
            }
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(r.u32()?);
            }
            Message::QueryParams(ids)
        }
        0x8107 => empty(body, Message::QueryAttributes)?,
        0x8201 => empty(body, Message::LocationQuery)?,
        0x8300 => {
            let flag = r.u8()?;
            let text_type = if v2019 { Some(r.u8()?) } else { None };
            Message::Text(Text {
                flag,
                text_type,
                text: gbk(r.rest()),
            })
        }
        0x8801 => {
            let m = Message::CameraShoot(CameraShoot {
                channel: r.u8()?,
                command: r.u16()?,
                interval: r.u16()?,
                save: r.u8()?,
                resolution: r.u8()?,
                quality: r.u8()?,
                brightness: r.u8()?,
                contrast: r.u8()?,
                saturation: r.u8()?,
                chroma: r.u8()?,
            });
            r.end()?;
            m
        }
        0x9003 => empty(body, Message::QueryAvAttributes)?,
        0x9101 => {
            let m = Message::LiveRequest(LiveRequest {
                server: r.short_text()?,
                tcp_port: r.u16()?,
                udp_port: r.u16()?,
                channel: r.u8()?,
                data_type: r.u8()?,
                stream: r.u8()?,
            });
            r.end()?;
            m
        }
        0x9102 => {
            let m = Message::LiveControl(LiveControl {
                channel: r.u8()?,
                command: r.u8()?,
                close_kind: r.u8()?,
                stream: r.u8()?,
            });
            r.end()?;
            m
        }
        0x9201 => {
            let m = Message::PlaybackRequest(PlaybackRequest {
                server: r.short_text()?,
                tcp_port: r.u16()?,
                udp_port: r.u16()?,
                channel: r.u8()?,
                av_type: r.u8()?,
                stream: r.u8()?,
                storage: r.u8()?,
                mode: r.u8()?,
                speed: r.u8()?,
                start: r.time()?,
                end: r.time()?,
            });
            r.end()?;
            m
        }
        0x9202 => {
            let m = Message::PlaybackControl(PlaybackControl {
                channel: r.u8()?,
                control: r.u8()?,
                speed: r.u8()?,
                position: r.time()?,
            });
            r.end()?;
            m
        }
        0x9205 => {
            let m = Message::ResourceQuery(ResourceQuery {
                channel: r.u8()?,
                start: r.time()?,
                end: r.time()?,
                alarm: r.u64()?,
                av_type: r.u8()?,
                stream: r.u8()?,
                storage: r.u8()?,
            });
            r.end()?;
            m
        }
        0x9206 => {
            let m = Message::FileUpload(FileUpload {
                server: r.short_text()?,
                port: r.u16()?,
                user: r.short_text()?,
                password: r.short_text()?,
                path: r.short_text()?,
                channel: r.u8()?,
                start: r.time()?,
                end: r.time()?,
                alarm: r.u64()?,
                av_type: r.u8()?,
                stream: r.u8()?,
                storage: r.u8()?,
                conditions: r.u8()?,
            });
            r.end()?;
            m
        }
        0x9207 => {
            let m = Message::FileUploadControl {
                reply_serial: r.u16()?,
                control: r.u8()?,
            };
            r.end()?;
            m
        }
        0x9208 => {
            let m = Message::AttachmentUpload(AttachmentUpload {
                server: r.short_text()?,
                tcp_port: r.u16()?,
                udp_port: r.u16()?,
                label: label(&mut r)?,
                alarm_number: r.array()?,
                reserved: r.array()?,
            });
            r.end()?;
            m
        }
        _ => Message::Unknown(body.to_vec()),
    };
    Ok(m)
}

fn general(r: &mut Reader<'_>) -> R<GeneralResponse> {
    let g = GeneralResponse {
        reply_serial: r.u16()?,
        reply_id: r.u16()?,
        result: r.u8()?,
    };
    // Some peers append vendor bytes after the 5 standard ones: ignored.
    Ok(g)
}

fn register(r: &mut Reader<'_>, v2019: bool) -> R<Register> {
    // 2011 vs 2013 only from the length (§4.3): a 2013 body has at least 37 bytes, the
    // fixed part; shorter ones are 2011 (the smaller of the two peers' thresholds, so a
    // 2013 body with an empty plate still reads as 2013).
    let layout = if v2019 {
        RegisterLayout::V2019
    } else if r.left() >= 37 {
        RegisterLayout::V2013
    } else {
        RegisterLayout::V2011
    };
    let (maker, model, id) = register_widths(layout);
    Ok(Register {
        layout,
        province: r.u16()?,
        city: r.u16()?,
        manufacturer: r.fixed_text(maker)?,
        model: r.fixed_text(model)?,
        terminal_id: r.fixed_text(id)?,
        plate_color: r.u8()?,
        // Some terminals pad the plate with NULs like the fixed fields.
        plate: text(r.rest()),
    })
}

/// Manufacturer, model and terminal-id widths of a 0x0100 layout.
pub(super) fn register_widths(layout: RegisterLayout) -> (usize, usize, usize) {
    match layout {
        RegisterLayout::V2011 => (5, 8, 7),
        RegisterLayout::V2013 => (5, 20, 7),
        RegisterLayout::V2019 => (11, 30, 30),
    }
}

fn auth(r: &mut Reader<'_>, v2019: bool) -> R<Auth> {
    if !v2019 {
        return Ok(Auth {
            auth_code: text(r.rest()),
            imei: None,
            software_version: None,
        });
    }
    let a = Auth {
        auth_code: r.short_text()?,
        imei: Some(r.fixed_text(15)?),
        software_version: Some(r.fixed_text(20)?),
    };
    r.end()?;
    Ok(a)
}

fn params(r: &mut Reader<'_>) -> R<Vec<Param>> {
    let n = usize::from(r.u8()?);
    param_items(r, n)
}

/// `n` parameter items. Some terminals send a count that disagrees with the items (the
/// count of the whole set in a subpackaged reply, or 0); the items present are what counts,
/// so the list is read to the end of the body and `n` only sizes the first allocation.
fn param_items(r: &mut Reader<'_>, n: usize) -> R<Vec<Param>> {
    let mut out = Vec::with_capacity(n.min(r.left() / 5));
    while r.left() > 0 {
        let id = r.u32()?;
        let len = usize::from(r.u8()?);
        let raw = r.take(len)?;
        out.push(Param {
            id,
            value: param_value(id, raw),
        });
    }
    Ok(out)
}

pub(super) fn param_value(id: u32, raw: &[u8]) -> ParamValue {
    match (param_kind(id), raw.len()) {
        (Some(ParamKind::Byte), 1) => ParamValue::Byte(raw[0]),
        (Some(ParamKind::Word), 2) => ParamValue::Word(u16::from_be_bytes([raw[0], raw[1]])),
        (Some(ParamKind::Dword), 4) => {
            ParamValue::Dword(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
        }
        (Some(ParamKind::Text), _) => {
            let (s, had_errors) = encoding_rs::GBK.decode_without_bom_handling(raw);
            if had_errors || s.contains('\0') {
                ParamValue::Bytes(raw.to_vec())
            } else {
                ParamValue::Text(s.into_owned())
            }
        }
        _ => ParamValue::Bytes(raw.to_vec()),
    }
}

/// 0x0107. The 2019 standard widens the manufacturer to 11 bytes, but some 2019 terminals
/// keep 5: the width that makes the body end exactly wins, 11 first.
fn attributes(r: &mut Reader<'_>, v2019: bool) -> R<Attributes> {
    if v2019 {
        let start = r.at;
        if let Ok(a) = attributes_with(r, 11, 30, 30) {
            return Ok(a);
        }
        r.at = start;
        return attributes_with(r, 5, 30, 30);
    }
    attributes_with(r, 5, 20, 7)
}

fn attributes_with(r: &mut Reader<'_>, maker: usize, model: usize, id: usize) -> R<Attributes> {
    let a = Attributes {
        terminal_type: r.u16()?,
        manufacturer: r.fixed_text(maker)?,
        model: r.fixed_text(model)?,
        terminal_id: r.fixed_text(id)?,
        iccid: bcd_digits(r.take(10)?),
        hardware_version: r.short_text()?,
        firmware_version: r.short_text()?,
        gnss: r.u8()?,
        comm: r.u8()?,
    };
    r.end()?;
    Ok(a)
}

fn bcd_digits(b: &[u8]) -> String {
    b.iter()
        .flat_map(|x| [x >> 4, x & 0x0F])
        .map(|n| char::from_digit(u32::from(n), 16).unwrap_or('?'))
        .collect()
}

fn basic(r: &mut Reader<'_>) -> R<BasicLocation> {
    Ok(BasicLocation {
        alarm: AlarmFlags(r.u32()?),
        status: StatusFlags(r.u32()?),
        latitude_e6: r.u32()?,
        longitude_e6: r.u32()?,
        altitude_m: r.u16()?,
        speed_dkmh: r.u16()?,
        course: r.u16()?,
        time: r.time()?,
    })
}

/// A 0x0200 body: the basic block and its additional items.
pub fn decode_location(body: &[u8]) -> Result<Location, &'static str> {
    let mut r = Reader::new(body);
    let basic = basic(&mut r)?;
    // One allocation of the right size: the item walk is a few byte reads, far cheaper than
    // the reallocations a growing Vec makes on a report with 5 to 10 items.
    let mut items = Vec::with_capacity(count_items(&body[r.at..]));
    let mut trailing = Vec::new();
    while r.left() > 0 {
        if r.left() < 2 || r.left() - 2 < usize::from(body[r.at + 1]) {
            trailing = r.rest().to_vec();
            break;
        }
        let id = r.u8()?;
        let len = usize::from(r.u8()?);
        items.push(item(id, r.take(len)?));
    }
    Ok(Location {
        basic,
        items,
        trailing,
    })
}

/// Whole items (id, length, value) at the start of `rest`.
fn count_items(rest: &[u8]) -> usize {
    let (mut at, mut n) = (0usize, 0usize);
    while let Some(&len) = rest.get(at + 1) {
        at += 2 + usize::from(len);
        if at > rest.len() {
            break;
        }
        n += 1;
    }
    n
}

fn item(id: u8, v: &[u8]) -> LocationItem {
    typed_item(id, v).unwrap_or_else(|| LocationItem::Raw {
        id,
        value: v.to_vec(),
    })
}

fn be16(v: &[u8]) -> u16 {
    u16::from_be_bytes([v[0], v[1]])
}
fn be32(v: &[u8]) -> u32 {
    u32::from_be_bytes([v[0], v[1], v[2], v[3]])
}

fn typed_item(id: u8, v: &[u8]) -> Option<LocationItem> {
    use LocationItem as I;
    Some(match (id, v.len()) {
        (0x01, 4) => I::Mileage(be32(v)),
        (0x02, 2) => I::Fuel(be16(v)),
        (0x03, 2) => I::RecorderSpeed(be16(v)),
        (0x04, 2) => I::AlarmEventId(be16(v)),
        (0x05, 30) => I::TyrePressure(v.to_vec()),
        (0x06, 2) => I::CompartmentTemperature(be16(v) as i16),
        (0x11, 1) => I::Overspeed {
            location_type: v[0],
            area_id: None,
        },
        (0x11, 5) => I::Overspeed {
            location_type: v[0],
            area_id: Some(be32(&v[1..])),
        },
        (0x12, 6) => I::AreaAlarm {
            location_type: v[0],
            area_id: be32(&v[1..]),
            direction: v[5],
        },
        (0x13, 7) => I::SectionTime {
            section_id: be32(v),
            seconds: be16(&v[4..]),
            result: v[6],
        },
        (0x14, 4) => I::VideoAlarms(be32(v)),
        (0x15, 4) => I::VideoSignalLoss(be32(v)),
        (0x16, 4) => I::VideoOcclusion(be32(v)),
        (0x17, 2) => I::StorageFault(be16(v)),
        (0x18, 3) => I::AbnormalDriving {
            behaviour: be16(v),
            fatigue: v[2],
        },
        (0x25, 4) => I::ExtendedSignals(be32(v)),
        (0x2A, 2) => I::IoStatus(be16(v)),
        (0x2B, 4) => I::Analog(be32(v)),
        (0x30, 1) => I::Signal(v[0]),
        (0x31, 1) => I::Satellites(v[0]),
        (0x64, 47) => {
            let mut r = Reader::new(v);
            I::Adas(AdasAlarm {
                alarm_id: r.u32().ok()?,
                flag: r.u8().ok()?,
                kind: r.u8().ok()?,
                level: r.u8().ok()?,
                front_speed_kmh: r.u8().ok()?,
                front_distance: r.u8().ok()?,
                departure: r.u8().ok()?,
                road_sign_type: r.u8().ok()?,
                road_sign_value: r.u8().ok()?,
                common: common(&mut r).ok()?,
            })
        }
        (0x65, 47) => {
            let mut r = Reader::new(v);
            I::Dsm(DsmAlarm {
                alarm_id: r.u32().ok()?,
                flag: r.u8().ok()?,
                kind: r.u8().ok()?,
                level: r.u8().ok()?,
                fatigue: r.u8().ok()?,
                reserved: r.array().ok()?,
                common: common(&mut r).ok()?,
            })
        }
        (0x66, n) if n >= 41 && (n - 41) % 9 == 0 => {
            let mut r = Reader::new(v);
            let alarm_id = r.u32().ok()?;
            let flag = r.u8().ok()?;
            let common = common(&mut r).ok()?;
            let count = usize::from(r.u8().ok()?);
            if count * 9 != r.left() {
                return None;
            }
            let mut tyres = Vec::with_capacity(count);
            for _ in 0..count {
                tyres.push(TyreAlarm {
                    position: r.u8().ok()?,
                    alarms: r.u16().ok()?,
                    pressure: r.u16().ok()?,
                    temperature: r.u16().ok()?,
                    battery: r.u16().ok()?,
                });
            }
            I::Tpms(TpmsAlarm {
                alarm_id,
                flag,
                common,
                tyres,
            })
        }
        (0x67, 41) => {
            let mut r = Reader::new(v);
            I::Bsd(BsdAlarm {
                alarm_id: r.u32().ok()?,
                flag: r.u8().ok()?,
                kind: r.u8().ok()?,
                common: common(&mut r).ok()?,
            })
        }
        _ => return None,
    })
}

fn common(r: &mut Reader<'_>) -> R<SafetyCommon> {
    Ok(SafetyCommon {
        speed_kmh: r.u8()?,
        altitude_m: r.u16()?,
        latitude_e6: r.u32()?,
        longitude_e6: r.u32()?,
        time: r.time()?,
        vehicle_status: r.u16()?,
        label: label(r)?,
    })
}

fn label(r: &mut Reader<'_>) -> R<AlarmLabel> {
    Ok(AlarmLabel {
        terminal_id: r.array()?,
        time: r.time()?,
        seq: r.u8()?,
        attachments: r.u8()?,
        reserved: r.u8()?,
    })
}

fn media_event(r: &mut Reader<'_>) -> R<MediaEvent> {
    Ok(MediaEvent {
        media_id: r.u32()?,
        media_type: r.u8()?,
        format: r.u8()?,
        event: r.u8()?,
        channel: r.u8()?,
    })
}

fn batch(r: &mut Reader<'_>) -> R<BatchLocation> {
    let n = usize::from(r.u16()?);
    if n > super::MAX_BATCH_LOCATIONS {
        return Err("more locations in one 0x0704 than the hub takes (MAX_BATCH_LOCATIONS)");
    }
    let kind = r.u8()?;
    // Each item takes at least 2 + 28 bytes: bound the allocation by what is present.
    let mut items = Vec::with_capacity(n.min(r.left() / 30));
    for _ in 0..n {
        let len = usize::from(r.u16()?);
        items.push(decode_location(r.take(len)?)?);
    }
    r.end()?;
    Ok(BatchLocation { kind, items })
}
