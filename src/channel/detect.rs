//! A channel for a port that accepts every device protocol: the first frame decides.
//!
//! Installers point devices at the wrong port often enough (a JT/T 808 dashcam configured
//! for the GT06 port, or the reverse) that both gateway ports recognise both protocols from
//! the first byte of a frame (`78 78`/`79 79` GT06, `7e` JT/T 808). The first frame of a
//! connection fixes its protocol for good; a frame of the other protocol later closes the
//! connection ([`CloseReason::ProtocolChanged`]), since one device never speaks two.

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};

use crate::channel::gt06::{Gt06Channel, Gt06ChannelConfig};
use crate::channel::jt808::{Jt808Channel, Jt808ChannelConfig};
use crate::channel::{Action, AuthVerdict, Channel, CheckId, CloseReason, RegistrationVerdict};
use crate::codec::{gt06, jt808};
use crate::command::{Instruction, InstructionRefusal};
use crate::imei::Imei;

/// A frame of either protocol.
#[derive(Debug)]
pub enum AnyFrame {
    Gt06(gt06::Frame),
    Jt808(jt808::Packet),
}

impl AnyFrame {
    /// `gt06` or `jt808`: the metric label of the protocol.
    pub fn protocol(&self) -> &'static str {
        match self {
            AnyFrame::Gt06(_) => "gt06",
            AnyFrame::Jt808(_) => "jt808",
        }
    }
}

enum State {
    /// No frame yet.
    Undecided,
    Gt06(Gt06Channel),
    Jt808(Box<Jt808Channel>),
}

/// Both protocols' channel settings, made once per gateway and shared by its connections:
/// a copy in every connection would cost each about 150 bytes.
#[derive(Debug, Clone)]
pub struct ChannelConfigs {
    pub gt06: Gt06ChannelConfig,
    pub jt808: Jt808ChannelConfig,
}

/// The channel of a connection whose protocol the first frame decides.
pub struct AnyChannel {
    configs: Arc<ChannelConfigs>,
    opened_at: DateTime<Utc>,
    state: State,
    closed: bool,
}

impl AnyChannel {
    pub fn new(configs: Arc<ChannelConfigs>, now: DateTime<Utc>) -> Self {
        AnyChannel {
            configs,
            opened_at: now,
            state: State::Undecided,
            closed: false,
        }
    }

    /// The protocol the connection speaks, once its first frame arrived.
    pub fn protocol(&self) -> Option<&'static str> {
        match self.state {
            State::Undecided => None,
            State::Gt06(_) => Some("gt06"),
            State::Jt808(_) => Some("jt808"),
        }
    }

    fn close(&mut self, reason: CloseReason) -> Vec<Action> {
        self.closed = true;
        vec![Action::Close(reason)]
    }
}

impl Channel for AnyChannel {
    type Frame = AnyFrame;

    fn handle_frame(&mut self, frame: AnyFrame, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        match (&mut self.state, frame) {
            (State::Gt06(c), AnyFrame::Gt06(f)) => c.handle_frame(f, now),
            (State::Jt808(c), AnyFrame::Jt808(p)) => c.handle_frame(p, now),
            (State::Undecided, AnyFrame::Gt06(f)) => {
                // The login timeout keeps counting from when the connection opened.
                let mut c = Gt06Channel::new(self.configs.gt06.clone(), self.opened_at);
                let mut actions = vec![Action::ProtocolDetected { protocol: "gt06" }];
                actions.extend(c.handle_frame(f, now));
                self.state = State::Gt06(c);
                actions
            }
            (State::Undecided, AnyFrame::Jt808(p)) => {
                let mut c = Box::new(Jt808Channel::new(
                    self.configs.jt808.clone(),
                    self.opened_at,
                ));
                let mut actions = vec![Action::ProtocolDetected { protocol: "jt808" }];
                actions.extend(c.handle_frame(p, now));
                self.state = State::Jt808(c);
                actions
            }
            (State::Gt06(_) | State::Jt808(_), _) => self.close(CloseReason::ProtocolChanged),
        }
    }

    fn handle_instruction(
        &mut self,
        instruction: &Instruction,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        match &mut self.state {
            State::Undecided => Err(InstructionRefusal::NotLoggedIn),
            State::Gt06(c) => c.handle_instruction(instruction, now),
            State::Jt808(c) => c.handle_instruction(instruction, now),
        }
    }

    fn handle_signal(
        &mut self,
        instruction: &Instruction,
        now: DateTime<Utc>,
    ) -> Result<Vec<Action>, InstructionRefusal> {
        match &mut self.state {
            State::Undecided => Err(InstructionRefusal::NotLoggedIn),
            State::Gt06(c) => c.handle_signal(instruction, now),
            State::Jt808(c) => c.handle_signal(instruction, now),
        }
    }

    fn instruction_expired(&mut self, server_flag_id: u32) {
        match &mut self.state {
            State::Undecided => {}
            State::Gt06(c) => c.instruction_expired(server_flag_id),
            State::Jt808(c) => c.instruction_expired(server_flag_id),
        }
    }

    fn handle_auth_verdict(
        &mut self,
        check: CheckId,
        verdict: AuthVerdict,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        match &mut self.state {
            State::Undecided => Vec::new(),
            State::Gt06(c) => c.handle_auth_verdict(check, verdict, now),
            State::Jt808(c) => c.handle_auth_verdict(check, verdict, now),
        }
    }

    fn handle_registration_verdict(
        &mut self,
        check: CheckId,
        verdict: RegistrationVerdict,
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        match &mut self.state {
            State::Undecided => Vec::new(),
            State::Gt06(c) => c.handle_registration_verdict(check, verdict, now),
            State::Jt808(c) => c.handle_registration_verdict(check, verdict, now),
        }
    }

    fn handle_tick(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        if self.closed {
            return Vec::new();
        }
        match &mut self.state {
            State::Undecided => {
                // A connection that never sends a frame: the shorter login timeout of the
                // two protocols applies.
                let configs = &*self.configs;
                let timeout = configs.gt06.login_timeout.min(configs.jt808.login_timeout);
                let timeout = TimeDelta::from_std(timeout).unwrap_or(TimeDelta::MAX);
                if now.signed_duration_since(self.opened_at) >= timeout {
                    self.close(CloseReason::LoginTimeout)
                } else {
                    Vec::new()
                }
            }
            State::Gt06(c) => c.handle_tick(now),
            State::Jt808(c) => c.handle_tick(now),
        }
    }

    fn handle_close(&mut self, now: DateTime<Utc>) -> Vec<Action> {
        self.closed = true;
        match &mut self.state {
            State::Undecided => Vec::new(),
            State::Gt06(c) => c.handle_close(now),
            State::Jt808(c) => c.handle_close(now),
        }
    }

    fn imei(&self) -> Option<Imei> {
        match &self.state {
            State::Undecided => None,
            State::Gt06(c) => c.imei(),
            State::Jt808(c) => c.imei(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::TimeZone;

    use super::*;
    use crate::codec::jt808::Limits;
    use crate::codec::CrcPolicy;
    use crate::protocol::{DetectingProtocol, Gt06Protocol, Jt808Protocol, Protocol};

    /// GT06 login, IMEI 864717003283581, serial 9.
    const GT06_LOGIN: &str = "78780d01086471700328358100093f040d0a";
    /// JT/T 808 0x0102 authenticate of terminal 012345678901.
    const JT808_AUTH: &str = "7e0102000b01234567890100003137323939383431373338b57e";

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 3, 1, 12, 0, 0).unwrap()
    }

    fn protocol() -> DetectingProtocol {
        let jt808 = Jt808ChannelConfig {
            read_timeout: Duration::from_secs(300),
            login_timeout: Duration::from_secs(30),
            auth_grace: Duration::from_secs(10),
            new_imei_rule: false,
            accept_unknown_auth_codes: true,
            allow_reregistration: false,
            registrations_per_connection: 3,
            subpackages: Limits::default(),
            auth_code_seed: 1,
        };
        DetectingProtocol::new(
            "gt06",
            Gt06Protocol::new(
                CrcPolicy::Warn,
                Duration::from_secs(300),
                Duration::from_secs(30),
            ),
            Jt808Protocol::new(CrcPolicy::Warn, jt808),
        )
    }

    fn frame(hex: &str) -> AnyFrame {
        protocol()
            .decode(&hex::decode(hex).unwrap())
            .unwrap()
            .unwrap()
            .frame
    }

    #[test]
    fn gt06_start_is_cut_by_the_gt06_codec() {
        assert_eq!(frame(GT06_LOGIN).protocol(), "gt06");
    }

    #[test]
    fn jt808_start_is_cut_by_the_jt808_codec() {
        assert_eq!(frame(JT808_AUTH).protocol(), "jt808");
    }

    #[test]
    fn garbage_before_a_frame_is_skipped_and_counted() {
        let mut buf = vec![0x00, 0x11];
        buf.extend(hex::decode(JT808_AUTH).unwrap());
        let cut = protocol().decode(&buf).unwrap().unwrap();
        assert_eq!((cut.frame.protocol(), cut.skipped), ("jt808", 2));
    }

    #[test]
    fn a_lone_marker_byte_waits_for_more() {
        assert!(protocol().decode(&[0x00, 0x78]).unwrap().is_none());
    }

    #[test]
    fn a_stream_without_any_frame_start_fails() {
        let e = protocol().decode(&[0x55; 1100]).unwrap_err();
        assert_eq!(e.kind, "no_start");
    }

    #[test]
    fn first_frame_names_the_protocol() {
        let mut c = protocol().new_channel(t0());
        let actions = c.handle_frame(frame(JT808_AUTH), t0());
        assert_eq!(actions[0], Action::ProtocolDetected { protocol: "jt808" });
        assert!(matches!(actions[1], Action::VerifyAuthCode { .. }));
    }

    #[test]
    fn gt06_device_logs_in_on_any_port() {
        let mut c = protocol().new_channel(t0());
        let actions = c.handle_frame(frame(GT06_LOGIN), t0());
        assert_eq!(actions[0], Action::ProtocolDetected { protocol: "gt06" });
        assert_eq!(c.imei(), Some(Imei::parse("864717003283581").unwrap()));
    }

    #[test]
    fn a_frame_of_the_other_protocol_closes_the_connection() {
        let mut c = protocol().new_channel(t0());
        c.handle_frame(frame(GT06_LOGIN), t0());
        assert_eq!(
            c.handle_frame(frame(JT808_AUTH), t0()),
            vec![Action::Close(CloseReason::ProtocolChanged)]
        );
    }

    #[test]
    fn a_connection_that_sends_nothing_times_out() {
        let mut c = protocol().new_channel(t0());
        assert_eq!(
            c.handle_tick(t0() + chrono::TimeDelta::seconds(30)),
            vec![Action::Close(CloseReason::LoginTimeout)]
        );
    }

    #[test]
    fn instructions_wait_for_the_first_frame() {
        let mut c = protocol().new_channel(t0());
        let i = Instruction {
            pro_no: 128,
            content: "STATUS#".into(),
            server_flag_id: 1,
        };
        assert_eq!(
            c.handle_instruction(&i, t0()),
            Err(InstructionRefusal::NotLoggedIn)
        );
    }
}
