//! JT/T 808 channel: the per-connection state machine of a JT/T 808 terminal (2011, 2013 and
//! 2019 revisions, with the JT/T 1078 and Su-biao signalling carried over it).
//!
//! It decides every JT/T 808 rule in one pure place: registration and authentication, which
//! uplinks are answered and how, what each one publishes, subpackage reassembly, and one
//! outstanding instruction per terminal. The connection driver feeds it decoded
//! [`Packet`]s, instructions, verdicts on authentication codes and the time, and runs the
//! returned [`Action`]s in order: an event is always published before the 0x8001 that lets
//! the terminal forget it.
//!
//! # Identity
//! A terminal is known by its header phone number. Under Jimi's `newImeiRule` the 6 phone
//! bytes are the first 14 IMEI digits as a 48-bit number and the Luhn digit is appended;
//! without it the phone digits are the id. Every event, registry entry and instruction uses
//! that id ([`phone_to_imei`]). A phone that fits neither rule is refused at registration
//! (0x8100 result 4, terminal unknown) and authentication (0x8001 result 1).
//!
//! # Registration and authentication
//! - 0x0100 register: a fresh code is issued and the driver asked to store it
//!   ([`Action::RegisterTerminal`]); only once the store says it is durable
//!   ([`RegistrationVerdict::Registered`]) is it sent in 0x8100 result 0. A terminal that
//!   already holds a code is answered 0x8100 result 3 (terminal already registered) unless
//!   the operator allows re-registration (`allow_reregistration`): otherwise anyone who knows
//!   a terminal's phone number could lock it out by registering it again. A connection
//!   registers at most `registrations_per_connection` times, and the driver limits
//!   registrations per source address. Codes are 16 hex digits of a keyed hash of the seed,
//!   id and time: unguessable enough for a code that travels in clear text anyway.
//! - 0x0102 authenticate: the driver looks the code up ([`Action::VerifyAuthCode`]) and
//!   answers through [`Channel::handle_auth_verdict`]. A match authenticates. No stored code
//!   (a terminal registered with another platform before it was pointed at iothub)
//!   authenticates when `accept_unknown_auth_codes` is set, and the presented code is stored
//!   from then on; otherwise, and on a mismatch, 0x8001 result 1 tells the terminal to
//!   register again. Authentication publishes `LOGIN` (zone GMT+08:00), then
//!   [`Action::LoggedIn`], then the 0x8001. Authenticating again with the same id is answered
//!   and changes nothing else; another id on the same connection closes it.
//! - One store check at a time. Each check carries a [`CheckId`] and its verdict is applied
//!   only to that check, so no verdict can land on another request; a 0x0100 or 0x0102 that
//!   arrives while a check is outstanding (several in one read, say) is refused with 0x8001
//!   result 1, never merged into the one in flight. A connection never changes identity.
//! - Any other message before authentication, and any registration, starts a grace period
//!   (`auth_grace`): a connection still unauthenticated when it ends is closed
//!   ([`CloseReason::NotAuthenticated`]), as is one that has not authenticated within
//!   `login_timeout` of opening ([`CloseReason::LoginTimeout`]). Messages other than these
//!   get 0x8001 result 1; subpackages are refused, not buffered, before authentication.
//! - Nothing received for `read_timeout` closes the connection ([`CloseReason::IdleTimeout`]).
//!   `LOGOUT` is published once: on 0x0003, or when the connection closes.
//!
//! # What each uplink does (after authentication)
//! | uplink | published | reply |
//! |---|---|---|
//! | 0x0002 heartbeat | `/pushhb` (state of the last location) | 0x8001 |
//! | 0x0003 logout | `/pushevent` LOGOUT | 0x8001 |
//! | 0x0200 location | `/pushgps`, and `/pushalarm` per alarm it raises | 0x8001 |
//! | 0x0704 batch | the same per item (`gpsMode` 1 for blind-area backfill) | 0x8001 |
//! | 0x0201 position reply | `/pushgps`; answers 0x8201 | none |
//! | 0x0900 transparent data | `/pushPassThroughData` | 0x8001 |
//! | 0x1205 resource list | `/pushresourcelist`; answers 0x9205 | none |
//! | 0x1206 FTP upload result | `/pushftpfileupload` | 0x8001 |
//! | 0x0800 multimedia event, 0x1005 passenger flow | nothing (no Jimi record) | 0x8001 |
//! | 0x0801 multimedia data | nothing (media storage is the media service's) | 0x8800, all received |
//! | 0x0001, 0x0104, 0x0107, 0x1003 | answers the outstanding instruction | none |
//! | body that does not parse | [`Action::Unrecognised`] | 0x8001 result 2 |
//! | unknown id | [`Action::Unrecognised`] | 0x8001 result 3 |
//!
//! The record mappings are in [`records`]. Subpackaged messages are reassembled first
//! ([`Reassembler`]); a message that goes quiet with packages missing gets one 0x8003 asking
//! for them per quiet spell and is dropped after the reassembly timeout.
//!
//! # Instructions
//! [`instruction::downlink`] turns a `proNo` and its JSON into a platform message; the
//! channel gives it the terminal's header layout and its own serial (from 0, wrapping) and
//! splits bodies over 1,000 bytes into subpackages. The answer is matched by serial and
//! message id ([`instruction::reply`]) and reported as [`Action::InstructionReply`] with the
//! instruction's server flag. `instructionID`s of 0x9205/0x9206 requests are remembered by
//! serial (the last few), because the resource list and the upload result that carry them
//! to `/pushresourcelist` and `/pushftpfileupload` may come long after the answer.

pub mod instruction;
pub mod records;

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::channel::gt06::records::{event, LOGIN, LOGOUT};
use crate::channel::{Action, AuthVerdict, Channel, CheckId, CloseReason, RegistrationVerdict};
use crate::codec::jt808::{
    decode_body, encode, encode_general_response, encode_raw, encode_split, phone_to_imei, Header,
    Limits, Location, Message, Packet, Reassembler, RegisterResponse, ResendRequest,
};
use crate::command::{Instruction, InstructionRefusal, InstructionReply};
use crate::event::Record;
use crate::imei::Imei;

/// Largest body of one downlink packet; longer ones are subpackaged (as go-jt808 does).
pub const MAX_DOWNLINK_BODY: usize = 1000;
/// `instructionID`s of 0x9205/0x9206 requests remembered per connection.
const REMEMBERED_REQUESTS: usize = 16;

/// 0x8001 / 0x8100 results.
const RESULT_OK: u8 = 0;
const RESULT_FAILURE: u8 = 1;
const RESULT_MESSAGE_ERROR: u8 = 2;
const RESULT_NOT_SUPPORTED: u8 = 3;
const REGISTER_TERMINAL_REGISTERED: u8 = 3;
const REGISTER_TERMINAL_UNKNOWN: u8 = 4;

const MSG_RESOURCE_QUERY: u16 = 0x9205;
const MSG_FILE_UPLOAD: u16 = 0x9206;

/// Settings of a JT/T 808 channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jt808ChannelConfig {
    /// Close a connection when nothing has arrived for this long (`readTimeOut`).
    pub read_timeout: Duration,
    /// Close a connection that has not authenticated this long after it opened.
    pub login_timeout: Duration,
    /// After refusing an unauthenticated message, close the connection if it has not
    /// authenticated within this time.
    pub auth_grace: Duration,
    /// Jimi `newImeiRule`: the phone is the IMEI's first 14 digits in hex.
    pub new_imei_rule: bool,
    /// Authenticate terminals presenting a code the hub never issued (and keep it).
    pub accept_unknown_auth_codes: bool,
    /// Issue a new code to a terminal that already holds one.
    pub allow_reregistration: bool,
    /// Registrations one connection may make; the next closes it.
    pub registrations_per_connection: u32,
    pub subpackages: Limits,
    /// Mixed into issued authentication codes; the hub draws it at random when it starts.
    pub auth_code_seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Session {
    Unauthenticated,
    Authenticated {
        imei: Imei,
        /// Header of the terminal's last packet: phone and layout of downlinks.
        last_header: Header,
    },
}

/// The instruction on the wire, awaiting its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outstanding {
    msg_id: u16,
    serial: u16,
    server_flag_id: u32,
}

/// The store check the channel waits for, and the request it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PendingCheck {
    Auth {
        check: CheckId,
        imei: Imei,
        code: String,
        header: Header,
    },
    Registration {
        check: CheckId,
        code: String,
        header: Header,
    },
}

/// The state of one JT/T 808 connection.
pub struct Jt808Channel {
    config: Jt808ChannelConfig,
    read_timeout: TimeDelta,
    login_timeout: TimeDelta,
    auth_grace: TimeDelta,
    opened_at: DateTime<Utc>,
    last_received: DateTime<Utc>,
    session: Session,
    pending: Option<PendingCheck>,
    /// Id of the next store check.
    next_check: u32,
    /// Registrations this connection made.
    registrations: u32,
    /// When the first unauthenticated message was refused, or the first registration made.
    refused_since: Option<DateTime<Utc>>,
    closed: bool,
    logged_out: bool,
    outstanding: Option<Outstanding>,
    /// Serial of the next platform packet.
    next_serial: u16,
    reassembler: Reassembler,
    last_state: records::LastState,
    /// (serial, instructionID) of recent 0x9205/0x9206 requests, oldest first.
    requests: VecDeque<(u16, u16, String)>,
}

impl std::fmt::Debug for Jt808Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jt808Channel")
            .field("session", &self.session)
            .field("closed", &self.closed)
            .field("outstanding", &self.outstanding)
            .finish_non_exhaustive()
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

fn elapsed(since: DateTime<Utc>, now: DateTime<Utc>, timeout: TimeDelta) -> bool {
    now.signed_duration_since(since) >= timeout
}

/// A new authentication code: 16 uppercase hex digits.
fn issue_code(seed: u64, imei: &Imei, now: DateTime<Utc>) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    seed.hash(&mut h);
    imei.as_str().hash(&mut h);
    now.timestamp_nanos_opt().hash(&mut h);
    format!("{:016X}", h.finish())
}

impl Jt808Channel {
    pub fn new(config: Jt808ChannelConfig, now: DateTime<Utc>) -> Self {
        Jt808Channel {
            read_timeout: delta(config.read_timeout),
            login_timeout: delta(config.login_timeout),
            auth_grace: delta(config.auth_grace),
            reassembler: Reassembler::new(config.subpackages),
            config,
            opened_at: now,
            last_received: now,
            session: Session::Unauthenticated,
            pending: None,
            next_check: 0,
            registrations: 0,
            refused_since: None,
            closed: false,
            logged_out: false,
            outstanding: None,
            next_serial: 0,
            last_state: records::LastState::default(),
            requests: VecDeque::new(),
        }
    }

    fn imei_of(&self, header: &Header) -> Option<Imei> {
        phone_to_imei(&header.phone.digits(), self.config.new_imei_rule)
    }

    fn take_serial(&mut self) -> u16 {
        let s = self.next_serial;
        self.next_serial = self.next_serial.wrapping_add(1);
        s
    }

    fn take_check(&mut self) -> CheckId {
        let check = CheckId(self.next_check);
        self.next_check = self.next_check.wrapping_add(1);
        check
    }

    fn ack(&mut self, to: &Header, result: u8) -> Action {
        let serial = self.take_serial();
        Action::Send(encode_general_response(to, serial, result))
    }

    fn close(&mut self, reason: CloseReason) -> Vec<Action> {
        self.closed = true;
        vec![Action::Close(reason)]
    }

    /// A message the terminal may not send before authenticating.
    fn refuse(&mut self, header: &Header, now: DateTime<Utc>) -> Vec<Action> {
        self.refused_since.get_or_insert(now);
        vec![self.ack(header, RESULT_FAILURE)]
    }

    fn register(&mut self, header: &Header, now: DateTime<Utc>) -> Vec<Action> {
        let Some(imei) = self.imei_of(header) else {
            self.refused_since.get_or_insert(now);
            return self.register_response(header, REGISTER_TERMINAL_UNKNOWN, None);
        };
        if let Session::Authenticated { imei: current, .. } = self.session {
            if current != imei {
                return self.close(CloseReason::IdentityChanged);
            }
        }
        if self.pending.is_some() {
            return self.refuse(header, now);
        }
        if self.registrations >= self.config.registrations_per_connection {
            return self.close(CloseReason::TooManyRegistrations);
        }
        self.registrations += 1;
        self.refused_since.get_or_insert(now);
        let code = issue_code(self.config.auth_code_seed, &imei, now);
        let check = self.take_check();
        self.pending = Some(PendingCheck::Registration {
            check,
            code: code.clone(),
            header: *header,
        });
        vec![Action::RegisterTerminal {
            check,
            imei,
            code,
            replace: self.config.allow_reregistration,
        }]
    }

    fn register_response(
        &mut self,
        to: &Header,
        result: u8,
        auth_code: Option<String>,
    ) -> Vec<Action> {
        let serial = self.take_serial();
        let reply = Message::RegisterResponse(RegisterResponse {
            reply_serial: to.serial,
            result,
            auth_code,
        });
        match encode(&Header::reply_to(to, 0x8100, serial), &reply) {
            Ok(bytes) => vec![Action::Send(bytes)],
            // Only a code that does not fit could fail; ours are 16 ASCII digits.
            Err(_) => vec![self.ack(to, RESULT_FAILURE)],
        }
    }

    fn authenticate(&mut self, header: &Header, code: String, now: DateTime<Utc>) -> Vec<Action> {
        let Some(imei) = self.imei_of(header) else {
            return self.refuse(header, now);
        };
        if let Session::Authenticated { imei: current, .. } = self.session {
            if current != imei {
                return self.close(CloseReason::IdentityChanged);
            }
        }
        if self.pending.is_some() {
            return self.refuse(header, now);
        }
        let check = self.take_check();
        self.pending = Some(PendingCheck::Auth {
            check,
            imei,
            code: code.clone(),
            header: *header,
        });
        vec![Action::VerifyAuthCode { check, imei, code }]
    }

    /// The header of the terminal's last message while it is authenticated and the
    /// connection open: what a downlink's header is made from.
    fn logged_in_template(&self) -> Option<Header> {
        match self.session {
            Session::Authenticated { last_header, .. } if !self.closed => Some(last_header),
            _ => None,
        }
    }

    /// `instruction` as the frames that put it on the wire, under the next serial: the
    /// frames, the message id, the serial and the request's `instructionID`. An instruction
    /// that takes the outstanding slot is refused while another holds it.
    fn downlink(
        &mut self,
        instruction: &Instruction,
        takes_slot: bool,
    ) -> Result<(Vec<Action>, u16, u16, Option<String>), InstructionRefusal> {
        let last_header = match self.session {
            Session::Authenticated { last_header, .. } => Some(last_header),
            Session::Unauthenticated => None,
        };
        let v2019 = last_header.is_some_and(|h| h.is_2019());
        let downlink = instruction::downlink(instruction, v2019)?;
        let Some(template) = self.logged_in_template() else {
            return Err(InstructionRefusal::NotLoggedIn);
        };
        if takes_slot && self.outstanding.is_some() {
            return Err(InstructionRefusal::Busy);
        }
        let serial = self.next_serial;
        let header = Header::reply_to(&template, downlink.msg_id, serial);
        let frames = encode_split(&header, &downlink.message, MAX_DOWNLINK_BODY).map_err(|e| {
            InstructionRefusal::BadParameter {
                field: "cmdContent",
                reason: e.to_string(),
            }
        })?;
        self.next_serial = serial.wrapping_add(u16::try_from(frames.len()).unwrap_or(u16::MAX));
        Ok((
            frames.into_iter().map(Action::Send).collect(),
            downlink.msg_id,
            serial,
            downlink.instruction_id,
        ))
    }

    /// The answer to the outstanding instruction, if `message` is one.
    fn match_reply(&mut self, message: &Message) -> Option<Action> {
        let out = self.outstanding.as_ref()?;
        let reply = instruction::reply(out.msg_id, out.serial, message)?;
        let server_flag_id = out.server_flag_id;
        self.outstanding = None;
        Some(Action::InstructionReply(InstructionReply {
            server_flag_id,
            pro_no: reply.pro_no,
            content: reply.content,
        }))
    }

    /// `instructionID` of the 0x9205/0x9206 request sent with `serial`, or empty.
    fn request_id(&self, msg_id: u16, serial: u16) -> String {
        self.requests
            .iter()
            .rev()
            .find(|(s, m, _)| *s == serial && *m == msg_id)
            .map(|(_, _, id)| id.clone())
            .unwrap_or_default()
    }

    fn location_events(
        &mut self,
        imei: Imei,
        location: &Location,
        serial: u16,
        reupload: bool,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut actions = vec![Action::Publish(event(
            imei,
            Record::Gps(records::gps_record(imei, location, reupload, now)),
        ))];
        for alarm in records::alarm_records(imei, location, serial, now) {
            actions.push(Action::Publish(event(imei, Record::Alarm(alarm))));
        }
        actions
    }

    /// An uplink of an authenticated terminal.
    fn authenticated(
        &mut self,
        imei: Imei,
        header: &Header,
        message: Message,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        match message {
            Message::Heartbeat => {
                let hb = records::heartbeat_record(imei, &self.last_state, now);
                actions.push(Action::Publish(event(imei, Record::Heartbeat(hb))));
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::Logout => {
                if !self.logged_out {
                    self.logged_out = true;
                    let r = records::jt808_login_record(imei, LOGOUT, now);
                    actions.push(Action::Publish(event(imei, Record::Login(r))));
                }
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::Location(location) => {
                self.last_state.update(&location);
                actions.extend(self.location_events(imei, &location, header.serial, false, now));
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::BatchLocation(batch) => {
                let backfill = batch.kind == 1;
                for location in &batch.items {
                    actions.extend(self.location_events(
                        imei,
                        location,
                        header.serial,
                        backfill,
                        now,
                    ));
                }
                if let (false, Some(last)) = (backfill, batch.items.last()) {
                    self.last_state.update(last);
                }
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::LocationReply {
                reply_serial,
                location,
            } => {
                self.last_state.update(&location);
                let gps = records::gps_record(imei, &location, false, now);
                actions.push(Action::Publish(event(imei, Record::Gps(gps))));
                let message = Message::LocationReply {
                    reply_serial,
                    location,
                };
                actions.extend(self.match_reply(&message));
            }
            Message::Transparent { kind, data } => {
                let r = records::pass_through_record(imei, kind, &data, now);
                actions.push(Action::Publish(event(imei, Record::PassThrough(r))));
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::ResourceList(list) => {
                let id = self.request_id(MSG_RESOURCE_QUERY, list.reply_serial);
                let r = records::resource_list_record(imei, &list, &id, now);
                actions.push(Action::Publish(event(imei, Record::ResourceList(r))));
                actions.extend(self.match_reply(&Message::ResourceList(list)));
            }
            Message::FileUploadResult {
                reply_serial,
                result,
            } => {
                let id = self.request_id(MSG_FILE_UPLOAD, reply_serial);
                let r = records::ftp_upload_record(imei, reply_serial, result, &id, now);
                actions.push(Action::Publish(event(imei, Record::FtpFileUpload(r))));
                actions.extend(self.match_reply(&Message::FileUploadResult {
                    reply_serial,
                    result,
                }));
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::MediaEvent(_) | Message::PassengerFlow(_) => {
                actions.push(self.ack(header, RESULT_OK));
            }
            Message::MediaData(media) => {
                // 0x8800: media id, then 0 packages to retransmit = all received.
                let mut body = media.event.media_id.to_be_bytes().to_vec();
                body.push(0);
                let serial = self.take_serial();
                let h = Header::reply_to(header, 0x8800, serial);
                if let Ok(bytes) = encode_raw(&h, &body) {
                    actions.push(Action::Send(bytes));
                }
            }
            Message::TerminalResponse(_)
            | Message::ParamsReply(_)
            | Message::Attributes(_)
            | Message::AvAttributes(_) => match self.match_reply(&message) {
                Some(reply) => actions.push(reply),
                None if matches!(message, Message::TerminalResponse(_)) => {
                    // The answer to a 0x8003 or to an instruction that already expired.
                }
                None => actions.push(Action::Unrecognised {
                    protocol: header.msg_id,
                }),
            },
            Message::Invalid { .. } => {
                actions.push(Action::Unrecognised {
                    protocol: header.msg_id,
                });
                actions.push(self.ack(header, RESULT_MESSAGE_ERROR));
            }
            Message::Unknown(_) => {
                actions.push(Action::Unrecognised {
                    protocol: header.msg_id,
                });
                actions.push(self.ack(header, RESULT_NOT_SUPPORTED));
            }
            // Platform -> terminal messages, and the session messages handled before.
            _ => actions.push(Action::Unrecognised {
                protocol: header.msg_id,
            }),
        }
        actions
    }

    /// A whole message (reassembled if it came in packages).
    fn handle_message(
        &mut self,
        header: Header,
        message: Message,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        match message {
            Message::Register(_) => self.register(&header, now),
            Message::Auth(auth) => self.authenticate(&header, auth.auth_code, now),
            message => match self.session {
                Session::Unauthenticated => self.refuse(&header, now),
                Session::Authenticated { imei, last_header } => {
                    let same_phone = last_header.phone == header.phone;
                    if !same_phone && self.imei_of(&header) != Some(imei) {
                        return self.close(CloseReason::IdentityChanged);
                    }
                    self.session = Session::Authenticated {
                        imei,
                        last_header: header,
                    };
                    self.authenticated(imei, &header, message, now)
                }
            },
        }
    }

    fn resend_requests(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        let gaps = self.reassembler.poll(now);
        let mut actions = Vec::new();
        if !matches!(self.session, Session::Authenticated { .. }) {
            return actions;
        }
        for gap in gaps
            .into_iter()
            .filter(|g| !g.expired && !g.missing.is_empty())
        {
            let serial = self.take_serial();
            let request = Message::ResendRequest(ResendRequest {
                original_serial: gap.header.serial,
                indexes: gap.missing,
            });
            if let Ok(bytes) = encode(&Header::reply_to(&gap.header, 0x8003, serial), &request) {
                actions.push(Action::Send(bytes));
            }
        }
        actions
    }
}

impl Channel for Jt808Channel {
    type Frame = Packet;

    fn handle_frame(&mut self, packet: Packet, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        self.last_received = now;
        let Packet {
            header, message, ..
        } = packet;
        if let Message::Fragment(part) = message {
            if self.session == Session::Unauthenticated {
                return self.refuse(&header, now);
            }
            return match self.reassembler.push(&header, &part, now) {
                Ok(Some(whole)) => {
                    let message = decode_body(&whole.header, &whole.body);
                    self.handle_message(whole.header, message, now)
                }
                Ok(None) => Vec::new(),
                Err(_) => vec![
                    Action::Unrecognised {
                        protocol: header.msg_id,
                    },
                    self.ack(&header, RESULT_MESSAGE_ERROR),
                ],
            };
        }
        self.handle_message(header, message, now)
    }

    fn handle_auth_verdict(
        &mut self,
        answered: CheckId,
        verdict: AuthVerdict,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let (imei, code, header) = match self.pending.take() {
            Some(PendingCheck::Auth {
                check,
                imei,
                code,
                header,
            }) if check == answered => (imei, code, header),
            other => {
                self.pending = other;
                return Vec::new();
            }
        };
        if self.closed {
            return Vec::new();
        }
        let accepted = match verdict {
            AuthVerdict::Match => true,
            AuthVerdict::Unknown => self.config.accept_unknown_auth_codes,
            AuthVerdict::Mismatch | AuthVerdict::Unavailable => false,
        };
        if !accepted {
            return self.refuse(&header, now);
        }
        let mut actions = Vec::new();
        if verdict == AuthVerdict::Unknown {
            actions.push(Action::StoreAuthCode { imei, code });
        }
        if self.imei() != Some(imei) {
            self.refused_since = None;
            let login = records::jt808_login_record(imei, LOGIN, now);
            actions.push(Action::Publish(event(imei, Record::Login(login))));
            actions.push(Action::LoggedIn { imei });
        }
        self.session = Session::Authenticated {
            imei,
            last_header: header,
        };
        actions.push(self.ack(&header, RESULT_OK));
        actions
    }

    fn handle_registration_verdict(
        &mut self,
        answered: CheckId,
        verdict: RegistrationVerdict,
        _now: DateTime<Utc>,
    ) -> Vec<Action> {
        let (code, header) = match self.pending.take() {
            Some(PendingCheck::Registration {
                check,
                code,
                header,
            }) if check == answered => (code, header),
            other => {
                self.pending = other;
                return Vec::new();
            }
        };
        if self.closed {
            return Vec::new();
        }
        match verdict {
            RegistrationVerdict::Registered => {
                self.register_response(&header, RESULT_OK, Some(code))
            }
            RegistrationVerdict::AlreadyRegistered => {
                self.register_response(&header, REGISTER_TERMINAL_REGISTERED, None)
            }
            RegistrationVerdict::RateLimited => self.close(CloseReason::TooManyRegistrations),
            RegistrationVerdict::Unavailable => self.close(CloseReason::StoreFailed),
        }
    }

    fn handle_instruction(
        &mut self,
        instruction: &Instruction,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        let (frames, msg_id, serial, instruction_id) = self.downlink(instruction, true)?;
        if matches!(msg_id, MSG_RESOURCE_QUERY | MSG_FILE_UPLOAD) {
            if self.requests.len() >= REMEMBERED_REQUESTS {
                self.requests.pop_front();
            }
            self.requests
                .push_back((serial, msg_id, instruction_id.unwrap_or_default()));
        }
        self.outstanding = Some(Outstanding {
            msg_id,
            serial,
            server_flag_id: instruction.server_flag_id,
        });
        Ok(frames)
    }

    fn handle_signal(
        &mut self,
        instruction: &Instruction,
        _now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        let (frames, ..) = self.downlink(instruction, false)?;
        Ok(frames)
    }

    fn instruction_expired(&mut self, server_flag_id: u32) {
        if self
            .outstanding
            .as_ref()
            .is_some_and(|o| o.server_flag_id == server_flag_id)
        {
            self.outstanding = None;
        }
    }

    fn handle_tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        if elapsed(self.last_received, now, self.read_timeout) {
            return self.close(CloseReason::IdleTimeout);
        }
        if self.session == Session::Unauthenticated {
            if elapsed(self.opened_at, now, self.login_timeout) {
                return self.close(CloseReason::LoginTimeout);
            }
            if let Some(since) = self.refused_since {
                if elapsed(since, now, self.auth_grace) {
                    return self.close(CloseReason::NotAuthenticated);
                }
            }
        }
        self.resend_requests(now)
    }

    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.closed = true;
        match self.session {
            Session::Authenticated { imei, .. } if !self.logged_out => {
                self.logged_out = true;
                let r = records::jt808_login_record(imei, LOGOUT, now);
                vec![Action::Publish(event(imei, Record::Login(r)))]
            }
            _ => Vec::new(),
        }
    }

    fn imei(&self) -> Option<Imei> {
        match self.session {
            Session::Authenticated { imei, .. } => Some(imei),
            Session::Unauthenticated => None,
        }
    }
}

#[cfg(test)]
mod tests;
