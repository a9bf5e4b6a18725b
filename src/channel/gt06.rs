//! GT06 channel: the per-connection state machine of a GT06/Concox/Jimi device.
//!
//! It exists so every GT06 rule (login gating, which frames are answered, what each frame
//! publishes, one outstanding online command) is decided in one pure place and tested with
//! no socket. The connection driver feeds it decoded [`Frame`]s, instructions and the time,
//! and runs the returned [`Action`]s in order; an event is always published before the
//! acknowledgement that lets the device forget it.
//!
//! # Session rules
//! - Nothing but a login (0x01) is accepted first: any other frame closes the connection
//!   with [`CloseReason::NotLoggedIn`], and a connection that has not logged in
//!   `login_timeout` after it opened is closed on the next tick with
//!   [`CloseReason::LoginTimeout`].
//! - A login publishes `LOGIN` (`timezone` from the login's zone word, `GMT+00:00` when it has
//!   none), then [`Action::LoggedIn`], then the ack.
//! - A second login with the same IMEI (devices repeat it when an ack was lost) is acked
//!   again and changes nothing else: no second `LOGIN` event and no second `LoggedIn`, since
//!   the session and its registration are unchanged. A zone it carries replaces the old one.
//!   A login with another IMEI closes the connection ([`CloseReason::IdentityChanged`]).
//! - Once no frame has arrived for `read_timeout`, a tick closes the connection
//!   ([`CloseReason::IdleTimeout`]). After a close, the channel ignores further input; the
//!   driver's [`Channel::handle_close`] then publishes `LOGOUT` once for a logged-in device.
//!
//! # What each frame does
//! Acks are the generic `78 78 05 <proto> <device serial> <crc> 0d 0a`, always in the `7878`
//! form. A type is answered only where the protocol requires it or the device otherwise
//! retries (the JM-VL03 protocol lists location, LBS and information frames as needing no
//! reply; traccar's habit of acking almost everything is not followed).
//!
//! | uplink | published | reply |
//! |---|---|---|
//! | 0x01 login | `/pushevent` LOGIN (first login only) | ack; `78 78 01 01 0d 0a` for a ZhongXun login without serial |
//! | 0x13, 0x23 heartbeat | `/pushhb` | ack |
//! | 0x16, 0x26, 0x27, 0x19, 0xA4 alarm | `/pushalarm`; `/pushgps` when the frame reports no alarm but has a GPS block; nothing otherwise | ack |
//! | 0x12, 0x22, 0x37, 0xA0, 0x32, ... location | `/pushgps` | none |
//! | 0x10, 0x11 ZhongXun GPS (no serial) | `/pushgps` | `78 78 00 <proto> <time 6> 0d 0a` (mandatory for these devices) |
//! | 0x18, 0x28 multi-cell LBS (and a 0x32 without GPS) | `/pushlbs` `LBS` | none |
//! | 0x2C LBS + WiFi | `/pushlbs` (`WIFI` when it lists APs) | none |
//! | 0x69, 0x17 ZhongXun WiFi | `/pushlbs` (`WIFI` when it lists APs) | `78 78 00 <proto> <time 6 as received> 0d 0a` |
//! | 0x15, 0x21 command reply | [`Action::InstructionReply`] | none |
//! | 0x8A time request | nothing | 0x8A time reply: `now` in UTC, echoing the request serial (as the JM-VL03 sample does) |
//! | 0x94 information | nothing: none of its sub-types (voltage, status text, door, GNSS, ICCID) has a Jimi record of its own shape | none |
//! | anything else | [`Action::Unrecognised`] | none |
//!
//! Which family a protocol number belongs to is the codec's call: the channel acts on the
//! decoded [`Message`] and uses the protocol number only to pick the reply form.
//!
//! The optional address reply after an alarm (0x17/0x97 `ALARMSMS`) is not sent: the hub has
//! no reverse-geocoder, and devices do not wait for it. Address requests (0x1A/0x2A) stay
//! unanswered for the same reason, which is what the Jimi hub does without an LBS service.
//!
//! # Online commands
//! Only `proNo` 128 (GT06 0x80) is accepted, with 1 to [`MAX_COMMAND_LEN`] bytes of printable
//! ASCII. Parameters are checked first, then login, then the one-outstanding-command rule.
//! The 0x80 frame carries the instruction's `serverFlagId` as its server flag and the
//! channel's own serial counter (from 1, wrapping). A 0x15/0x21 reply becomes an
//! [`InstructionReply`] with `proNo` 128, the number of the command it answers; it frees
//! the slot when its flag is the outstanding one, and is reported just the same when the flag
//! is unknown (a late answer to an expired instruction, or one sent by another server): the
//! driver decides what to do with it.

pub mod records;

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::channel::{Action, Channel, CloseReason};
use crate::codec::gt06::{self, Frame, Location, Login, Message};
use crate::command::{Instruction, InstructionRefusal, InstructionReply};
use crate::event::Record;
use crate::imei::Imei;

/// `proNo` of a text command, the only one GT06 devices take (0x80 online command).
pub const PRO_NO_TEXT_COMMAND: u32 = 128;

/// Longest `cmdContent` sent to a device, in bytes. The 0x80 frame counts its command in one
/// byte and its whole length in another; 200 keeps well inside both.
pub const MAX_COMMAND_LEN: usize = 200;

const LOGIN: u8 = 0x01;

/// Settings of a GT06 channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gt06ChannelConfig {
    /// Close a connection when nothing has arrived for this long (`readTimeOut`).
    pub read_timeout: Duration,
    /// Close a connection that has not logged in this long after it opened.
    pub login_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    AwaitingLogin,
    LoggedIn {
        imei: Imei,
        /// Zone announced at login, minutes east of UTC.
        zone_minutes: Option<i16>,
    },
}

/// The state of one GT06 connection.
#[derive(Debug, Clone)]
pub struct Gt06Channel {
    read_timeout: TimeDelta,
    login_timeout: TimeDelta,
    opened_at: DateTime<Utc>,
    last_received: DateTime<Utc>,
    session: Session,
    /// A `Close` was returned: the driver is tearing the connection down.
    closed: bool,
    /// `LOGOUT` was published.
    logged_out: bool,
    /// Server flag of the online command awaiting its answer.
    outstanding: Option<u32>,
    /// Serial of the next server-originated frame.
    next_serial: u16,
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// Whether `timeout` has passed between `since` and `now` (a clock going backwards never
/// expires anything).
fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>, timeout: TimeDelta) -> bool {
    now.signed_duration_since(since) >= timeout
}

/// The 6 binary time bytes (YY MM DD hh mm ss) of a GPS block, as the device sent them.
fn gps_time_bytes(location: &Location) -> [u8; 6] {
    use chrono::{Datelike, Timelike};
    let t = location.gps.time;
    // The decoder read the year as 2000 + one byte, so it fits back; the rest are small.
    let year = u8::try_from(t.year() - 2000).unwrap_or(0);
    let small = |v: u32| u8::try_from(v).unwrap_or(0);
    [
        year,
        small(t.month()),
        small(t.day()),
        small(t.hour()),
        small(t.minute()),
        small(t.second()),
    ]
}

impl Gt06Channel {
    /// A channel for a connection that opened at `now`.
    pub fn new(config: Gt06ChannelConfig, now: DateTime<Utc>) -> Gt06Channel {
        Gt06Channel {
            read_timeout: delta(config.read_timeout),
            login_timeout: delta(config.login_timeout),
            opened_at: now,
            last_received: now,
            session: Session::AwaitingLogin,
            closed: false,
            logged_out: false,
            outstanding: None,
            next_serial: 1,
        }
    }

    /// Server flag of the online command awaiting its answer, if any.
    pub fn outstanding_instruction(&self) -> Option<u32> {
        self.outstanding
    }

    fn close(&mut self, reason: CloseReason) -> Vec<Action> {
        self.closed = true;
        vec![Action::Close(reason)]
    }

    fn take_serial(&mut self) -> u16 {
        let serial = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1).max(1);
        serial
    }

    fn login(
        &mut self,
        frame_serial: Option<u16>,
        login: &Login,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let reply = match frame_serial {
            Some(serial) => gt06::encode_ack(LOGIN, serial),
            // ZhongXun logins carry no serial and expect this short form.
            None => vec![0x78, 0x78, 0x01, LOGIN, 0x0D, 0x0A],
        };
        match self.session {
            Session::AwaitingLogin => {
                self.session = Session::LoggedIn {
                    imei: login.imei,
                    zone_minutes: login.timezone_minutes,
                };
                let record =
                    records::login_record(login.imei, records::LOGIN, login.timezone_minutes, now);
                vec![
                    Action::Publish(records::event(login.imei, Record::Login(record))),
                    Action::LoggedIn { imei: login.imei },
                    Action::Send(reply),
                ]
            }
            Session::LoggedIn { imei, zone_minutes } if imei == login.imei => {
                self.session = Session::LoggedIn {
                    imei,
                    zone_minutes: login.timezone_minutes.or(zone_minutes),
                };
                vec![Action::Send(reply)]
            }
            Session::LoggedIn { .. } => self.close(CloseReason::IdentityChanged),
        }
    }

    fn logged_in(
        &mut self,
        imei: Imei,
        zone: Option<i16>,
        frame: Frame,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let protocol = frame.protocol;
        // Frames without a serial are answered with serial 0: only the forms that have no
        // serial on the wire lack one, and those get their own reply forms below.
        let serial = frame.serial.unwrap_or(0);
        let publish = |record: Record| Action::Publish(records::event(imei, record));
        match frame.message {
            Message::Login(login) => self.login(frame.serial, &login, now),
            Message::Heartbeat(hb) => vec![
                publish(Record::Heartbeat(records::heartbeat_record(imei, &hb, now))),
                Action::Send(gt06::encode_ack(protocol, serial)),
            ],
            Message::Location(location) => {
                let record = records::gps_record(imei, protocol, &location, zone, now);
                let mut actions = vec![publish(Record::Gps(record))];
                if matches!(protocol, 0x10 | 0x11) && frame.serial.is_none() {
                    actions.push(Action::Send(gt06::encode_wifi_reply(
                        protocol,
                        gps_time_bytes(&location),
                    )));
                }
                actions
            }
            Message::Alarm(alarm) => {
                let mut actions = Vec::with_capacity(2);
                if let Some(record) = records::gt06_alarm_record(imei, protocol, &alarm, zone, now)
                {
                    actions.push(publish(Record::Alarm(record)));
                } else if let Some(record) =
                    records::alarm_position_record(imei, protocol, &alarm, zone, now)
                {
                    actions.push(publish(Record::Gps(record)));
                }
                actions.push(Action::Send(gt06::encode_ack(protocol, serial)));
                actions
            }
            Message::Lbs(report) => {
                vec![publish(Record::Lbs(records::lbs_record(
                    imei, &report, now,
                )))]
            }
            Message::Wifi(report) => {
                let mut actions = vec![publish(Record::Lbs(records::wifi_record(
                    imei, &report, now,
                )))];
                if matches!(protocol, 0x69 | 0x17) {
                    actions.push(Action::Send(gt06::encode_wifi_reply(
                        protocol,
                        report.time_raw,
                    )));
                }
                actions
            }
            Message::CommandReply(reply) => {
                if self.outstanding == Some(reply.server_flag) {
                    self.outstanding = None;
                }
                vec![Action::InstructionReply(InstructionReply {
                    server_flag_id: reply.server_flag,
                    pro_no: PRO_NO_TEXT_COMMAND,
                    content: reply.content,
                })]
            }
            Message::TimeRequest => {
                vec![Action::Send(gt06::encode_time_reply(now, serial))]
            }
            Message::Info { .. } => Vec::new(),
            // Downlink-only messages coming up, and types the codec does not know.
            Message::OnlineCommand(_)
            | Message::TimeReply(_)
            | Message::Ack
            | Message::Unknown { .. } => vec![Action::Unrecognised {
                protocol: u16::from(protocol),
            }],
        }
    }
}

fn check_content(content: &str) -> Result<(), InstructionRefusal> {
    let reason = if content.is_empty() {
        "must not be empty".to_string()
    } else if content.len() > MAX_COMMAND_LEN {
        format!(
            "is {} bytes, at most {MAX_COMMAND_LEN} are allowed",
            content.len()
        )
    } else if !content.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        "must be printable ASCII".to_string()
    } else {
        return Ok(());
    };
    Err(InstructionRefusal::BadParameter {
        field: "cmdContent",
        reason,
    })
}

impl Channel for Gt06Channel {
    type Frame = Frame;

    fn handle_frame(&mut self, frame: Frame, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        self.last_received = now;
        match self.session {
            Session::AwaitingLogin => match &frame.message {
                Message::Login(login) => self.login(frame.serial, login, now),
                _ => self.close(CloseReason::NotLoggedIn),
            },
            Session::LoggedIn { imei, zone_minutes } => {
                self.logged_in(imei, zone_minutes, frame, now)
            }
        }
    }

    fn handle_instruction(
        &mut self,
        instruction: &Instruction,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        if instruction.pro_no != PRO_NO_TEXT_COMMAND {
            return Err(InstructionRefusal::UnsupportedProNo(instruction.pro_no));
        }
        check_content(&instruction.content)?;
        if self.closed || matches!(self.session, Session::AwaitingLogin) {
            return Err(InstructionRefusal::NotLoggedIn);
        }
        if self.outstanding.is_some() {
            return Err(InstructionRefusal::Busy);
        }
        let serial = self.take_serial();
        let bytes =
            gt06::encode_online_command(instruction.server_flag_id, &instruction.content, serial);
        self.outstanding = Some(instruction.server_flag_id);
        Ok(vec![Action::Send(bytes)])
    }

    fn instruction_expired(&mut self, server_flag_id: u32) {
        if self.outstanding == Some(server_flag_id) {
            self.outstanding = None;
        }
    }

    fn handle_tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        if matches!(self.session, Session::AwaitingLogin)
            && elapsed(self.opened_at, now, self.login_timeout)
        {
            return self.close(CloseReason::LoginTimeout);
        }
        if elapsed(self.last_received, now, self.read_timeout) {
            return self.close(CloseReason::IdleTimeout);
        }
        Vec::new()
    }

    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.closed = true;
        self.outstanding = None;
        match self.session {
            Session::LoggedIn { imei, zone_minutes } if !self.logged_out => {
                self.logged_out = true;
                let record = records::login_record(imei, records::LOGOUT, zone_minutes, now);
                vec![Action::Publish(records::event(imei, Record::Login(record)))]
            }
            _ => Vec::new(),
        }
    }

    fn imei(&self) -> Option<Imei> {
        match self.session {
            Session::LoggedIn { imei, .. } => Some(imei),
            Session::AwaitingLogin => None,
        }
    }
}

#[cfg(test)]
mod tests;
