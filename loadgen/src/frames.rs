//! The uplink frames a GT06 tracker sends, built as typed [`Frame`]s and encoded with iothub's
//! own encoder, so the simulator speaks exactly what the codec under test defines: if the
//! two disagree with real devices, the hex-vector tests of the codec catch it, not this crate.

use chrono::{DateTime, Utc};
use iothub::codec::gt06::{
    self, Alarm, Cell, CommandReply, Frame, Gps, Heartbeat, Location, Login, Message, TerminalInfo,
};
use iothub::imei::Imei;

use crate::movement::Fix;

/// Protocol numbers used by the simulator.
pub mod proto {
    pub const LOGIN: u8 = 0x01;
    pub const HEARTBEAT: u8 = 0x13;
    pub const COMMAND_REPLY: u8 = 0x21;
    pub const GPS: u8 = 0x22;
    pub const ALARM: u8 = 0x26;
    pub const ONLINE_COMMAND: u8 = 0x80;
    pub const TIME: u8 = 0x8A;
}

/// The serving cell every simulated tracker reports (China Mobile, Shenzhen).
pub const SIM_CELL: Cell = Cell {
    mcc: 460,
    mnc: 0,
    lac: 0x287D,
    cell_id: 0x1F71,
    rssi: None,
};

/// Terminal information of a healthy tracker on a running vehicle: GPS positioned,
/// external power connected, ACC on, no alarm, disarmed.
pub const TERMINAL_RUNNING: TerminalInfo = TerminalInfo(0x46);

/// Language byte: 2 = English (replies in English, alarms expect an acknowledgement).
pub const LANGUAGE_EN: u8 = 2;

fn frame(protocol: u8, extended: bool, serial: u16, message: Message) -> Frame {
    Frame {
        extended,
        protocol,
        serial: Some(serial),
        crc_ok: Some(true),
        message,
    }
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    gt06::encode(frame, &mut out);
    out
}

/// 0x01 login with type identifier and time-zone word (L = 0x11, like VL03 firmware).
pub fn login(imei: Imei, type_id: u16, timezone_minutes: i16, serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::LOGIN,
        false,
        serial,
        Message::Login(Login {
            imei,
            type_id: Some(type_id),
            timezone_minutes: Some(timezone_minutes),
            language: Some(LANGUAGE_EN),
        }),
    ))
}

/// 0x13 heartbeat: voltage level 6 (very high), GSM 4 (strong), no alarm.
pub fn heartbeat(serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::HEARTBEAT,
        false,
        serial,
        Message::Heartbeat(Heartbeat {
            terminal_info: TERMINAL_RUNNING,
            voltage_level: Some(6),
            battery_volts: None,
            gsm_signal: 4,
            alarm_code: 0,
            language: LANGUAGE_EN,
        }),
    ))
}

fn gps_block(fix: &Fix) -> Gps {
    Gps {
        time: fix.time,
        satellites: fix.satellites.min(15),
        latitude: fix.latitude,
        longitude: fix.longitude,
        speed_kmh: fix.speed_kmh,
        course: fix.course % 360,
        positioned: true,
        differential: false,
        acc: None,
    }
}

/// 0x22 GPS + LBS, real-time, upload mode 0x00 (fixed interval), with mileage.
pub fn gps(fix: &Fix, serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::GPS,
        false,
        serial,
        Message::Location(Location {
            gps: gps_block(fix),
            cell: Some(SIM_CELL),
            acc: Some(true),
            upload_mode: Some(0x00),
            reupload: false,
            mileage_m: Some(fix.odometer_m),
        }),
    ))
}

/// 0x26 alarm (UTC GPS block) with the given alarm byte (1 SOS, 2 power cut, 3 vibration...).
pub fn alarm(code: u8, fix: &Fix, serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::ALARM,
        false,
        serial,
        Message::Alarm(Alarm {
            gps: Some(gps_block(fix)),
            cell: Some(SIM_CELL),
            terminal_info: TERMINAL_RUNNING,
            voltage_level: 6,
            gsm_signal: 4,
            alarm_code: code,
            language: LANGUAGE_EN,
            fence: None,
            mileage_m: None,
        }),
    ))
}

/// 0x21 reply (7979 form) to an online command, echoing its server flag.
pub fn command_reply(server_flag: u32, content: &str, serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::COMMAND_REPLY,
        true,
        serial,
        Message::CommandReply(CommandReply {
            server_flag,
            content: content.to_owned(),
        }),
    ))
}

/// 0x8A time request (empty body).
pub fn time_request(serial: u16) -> Vec<u8> {
    encoded(&frame(proto::TIME, false, serial, Message::TimeRequest))
}

/// A server-side 0x80 online command: used by in-process test servers and the tests here.
pub fn online_command(server_flag: u32, command: &str, serial: u16) -> Vec<u8> {
    encoded(&frame(
        proto::ONLINE_COMMAND,
        false,
        serial,
        Message::OnlineCommand(iothub::codec::gt06::OnlineCommand {
            server_flag,
            command: command.to_owned(),
        }),
    ))
}

/// A server-side generic acknowledgement of `protocol` with the device's serial.
pub fn ack(protocol: u8, serial: u16) -> Vec<u8> {
    encoded(&frame(protocol, false, serial, Message::Ack))
}

/// A server-side 0x8A time reply.
pub fn time_reply(time: DateTime<Utc>, serial: u16) -> Vec<u8> {
    encoded(&frame(proto::TIME, false, serial, Message::TimeReply(time)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use iothub::codec::{gt06::decode, CrcPolicy};

    fn imei() -> Imei {
        Imei::parse("864717003664467").unwrap_or_else(|e| panic!("{e}"))
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn decoded(bytes: &[u8]) -> Frame {
        match decode(bytes, CrcPolicy::Reject) {
            Ok(Some(d)) => {
                assert_eq!(
                    d.consumed,
                    bytes.len(),
                    "frame {} not fully consumed",
                    hex(bytes)
                );
                d.frame
            }
            other => panic!("frame {} did not decode: {other:?}", hex(bytes)),
        }
    }

    #[test]
    fn login_reply_is_the_documented_ack() {
        // GT06 v1.8.1 Appendix B: login ack with serial 1.
        assert_eq!(hex(&ack(proto::LOGIN, 1)), "787805010001d9dc0d0a");
    }

    #[test]
    fn login_matches_the_reference_frame() {
        // Worked example E1 of the GT06 reference: type 0x100F, zone UTC-4:00, serial 2.
        // The language bits there are 10 (2), as the simulator sends.
        let bytes = login(imei(), 0x100F, -240, 2);
        assert_eq!(hex(&bytes), "787811010864717003664467100f190a0002c6d20d0a");
    }

    #[test]
    fn heartbeat_round_trips() {
        let frame = decoded(&heartbeat(442));
        assert_eq!(frame.protocol, proto::HEARTBEAT);
        assert_eq!(frame.serial, Some(442));
        match frame.message {
            Message::Heartbeat(hb) => {
                assert_eq!(hb.terminal_info, TERMINAL_RUNNING);
                assert_eq!(hb.voltage_level, Some(6));
                assert_eq!(hb.gsm_signal, 4);
            }
            other => panic!("not a heartbeat: {other:?}"),
        }
    }

    #[test]
    fn gps_round_trips_position_and_time() {
        let time = Utc
            .with_ymd_and_hms(2025, 3, 1, 12, 0, 5)
            .single()
            .unwrap_or_default();
        let fix = Fix {
            time,
            latitude: -22.576539,
            longitude: 113.942885,
            speed_kmh: 57,
            course: 155,
            satellites: 7,
            odometer_m: 698,
        };
        let frame = decoded(&gps(&fix, 9));
        assert_eq!(frame.protocol, proto::GPS);
        assert_eq!(frame.serial, Some(9));
        let Message::Location(loc) = frame.message else {
            panic!("not a location");
        };
        assert_eq!(loc.gps.time, time);
        assert!((loc.gps.latitude - fix.latitude).abs() < 1e-6);
        assert!((loc.gps.longitude - fix.longitude).abs() < 1e-6);
        assert_eq!(loc.gps.speed_kmh, 57);
        assert_eq!(loc.gps.course, 155);
        assert_eq!(loc.mileage_m, Some(698));
    }

    #[test]
    fn alarm_round_trips_its_code() {
        let time = Utc
            .with_ymd_and_hms(2025, 3, 1, 12, 0, 5)
            .single()
            .unwrap_or_default();
        let frame = decoded(&alarm(1, &Fix::at(time, 22.5, 114.0), 3));
        assert_eq!(frame.protocol, proto::ALARM);
        let Message::Alarm(alarm) = frame.message else {
            panic!("not an alarm");
        };
        assert_eq!(alarm.alarm_code, 1);
    }

    #[test]
    fn command_reply_is_7979_and_echoes_the_flag() {
        let bytes = command_reply(0x0000_1234, "OK! STATUS#", 5);
        assert_eq!(&bytes[..2], &[0x79, 0x79]);
        let frame = decoded(&bytes);
        assert_eq!(frame.protocol, proto::COMMAND_REPLY);
        assert_eq!(
            frame.message,
            Message::CommandReply(CommandReply {
                server_flag: 0x1234,
                content: "OK! STATUS#".into()
            })
        );
    }

    #[test]
    fn online_command_matches_the_reference_frame() {
        // enc-01: flag 0, "Relay,1#", serial 0.
        assert_eq!(
            hex(&online_command(0, "Relay,1#", 0)),
            "787812800c0000000052656c61792c312300009dee0d0a"
        );
    }

    #[test]
    fn time_reply_matches_the_reference_frame() {
        // JM-VL03 sample: 2015-12-29 00:00:21, serial 6.
        let time = Utc
            .with_ymd_and_hms(2015, 12, 29, 0, 0, 21)
            .single()
            .unwrap_or_default();
        assert_eq!(
            hex(&time_reply(time, 6)),
            "78780b8a0f0c1d0000150006f0860d0a"
        );
    }
}
