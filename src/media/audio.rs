//! Device audio to 16-bit PCM: what every audio path needs before it can re-encode.
//!
//! Dashcams send JT/T 1078 audio as G.711 A-law or µ-law, G.726, or IMA ADPCM, none of
//! which a browser plays, so egress transcodes through PCM. AAC needs no decoding here: it
//! passes through. Many HiSilicon-based units prefix each frame with a 4-byte header that
//! [`strip_hisilicon`] removes.
//!
//! Choices a decoder has to make that the standards leave open, each following what
//! HiSilicon-based DVRs send and what other JT/T 1078 servers assume:
//! - **G.726** arrives without any rate signalling. The rate is read from the frame size,
//!   assuming 40 ms (320 samples) per frame first, as the JT/T 1078 servers in the wild and
//!   the usual 320-sample HiSilicon configuration do, then 20 ms (160 samples): 80/120/160/
//!   200 bytes are 16/24/32/40 kbit/s, 40/60/100 bytes are 16/24/40 kbit/s. A frame of any
//!   other size is decoded at the rate in use, which starts at 40 kbit/s, the HiSilicon
//!   SDK's default. A change of rate restarts the decoder's adaptation. Codewords are packed from the
//!   least significant bit of each byte (RFC 3551 and ffmpeg's `g726le`), the HiSilicon
//!   layout.
//! - **IMA ADPCM** (JT/T 1078 "ADPCM(A)") frames start with the encoder's state (predicted
//!   sample i16 LE, step index u8, one reserved byte), then two codes per byte with the high
//!   nibble first (the DVI reference order). Each frame seeds the decoder from that state,
//!   so a lost frame costs only itself; the header sample is a seed, not an output sample.

use thiserror::Error;

/// The 8 kHz every narrow-band device codec here runs at.
const NARROW_BAND_RATE: u32 = 8000;

/// Strips the HiSilicon `00 01 NN 00` prefix when present and consistent with the length
/// (NN*2 == len-4); otherwise returns the frame unchanged.
///
/// Bytes 2..4 are the payload length in 16-bit words, little-endian, so a byte 3 other than
/// 0 is accepted when the frame is long enough to need it.
pub fn strip_hisilicon(frame: &[u8]) -> &[u8] {
    match frame {
        [0x00, 0x01, lo, hi, rest @ ..]
            if usize::from(u16::from_le_bytes([*lo, *hi])) * 2 == rest.len() =>
        {
            rest
        }
        _ => frame,
    }
}

/// The audio codecs dashcams send, by JT/T 1078 payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceAudioCodec {
    G711A,
    G711U,
    G726,
    ImaAdpcm,
    Aac,
}

impl DeviceAudioCodec {
    /// The codec of a JT/T 1078 payload type (6, 7, 8, 26, 19 and 24), `None` for the rest.
    pub fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            6 => Some(Self::G711A),
            7 => Some(Self::G711U),
            8 => Some(Self::G726),
            26 => Some(Self::ImaAdpcm),
            19 | 24 => Some(Self::Aac),
            _ => None,
        }
    }
}

/// Why a frame could not be decoded. The decoder stays usable for the next frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AudioError {
    #[error("IMA ADPCM frame of {0} bytes has no room for its 4-byte state header")]
    AdpcmHeaderMissing(usize),
    #[error("IMA ADPCM step index {0} is outside 0..=88")]
    AdpcmStepIndex(u8),
}

/// Decodes one device audio frame to 16-bit PCM (8 kHz mono for G.711/G.726/ADPCM),
/// appending to `out`; keeps decoder state across frames.
#[derive(Debug, Clone)]
pub struct AudioDecoder {
    kind: DecoderKind,
}

#[derive(Debug, Clone)]
enum DecoderKind {
    G711A,
    G711U,
    G726(Box<G726State>),
    ImaAdpcm,
}

impl AudioDecoder {
    /// A decoder for `codec`; `None` for AAC, which is passed through rather than decoded.
    pub fn new(codec: DeviceAudioCodec) -> Option<Self> {
        let kind = match codec {
            DeviceAudioCodec::G711A => DecoderKind::G711A,
            DeviceAudioCodec::G711U => DecoderKind::G711U,
            DeviceAudioCodec::G726 => DecoderKind::G726(Box::new(G726State::new(G726Rate::R40))),
            DeviceAudioCodec::ImaAdpcm => DecoderKind::ImaAdpcm,
            DeviceAudioCodec::Aac => return None,
        };
        Some(Self { kind })
    }

    /// Decodes `frame` (HiSilicon prefix already stripped), appending its samples to `out`.
    pub fn decode(&mut self, frame: &[u8], out: &mut Vec<i16>) -> Result<(), AudioError> {
        match &mut self.kind {
            DecoderKind::G711A => out.extend(frame.iter().map(|&b| ALAW_TO_LINEAR[usize::from(b)])),
            DecoderKind::G711U => out.extend(frame.iter().map(|&b| ULAW_TO_LINEAR[usize::from(b)])),
            DecoderKind::G726(state) => {
                let rate = G726Rate::for_frame_len(frame.len()).unwrap_or(state.rate);
                if rate != state.rate {
                    // The predictor adapted to another rate's codes is meaningless for these.
                    **state = G726State::new(rate);
                }
                state.decode_le(frame, out);
            }
            DecoderKind::ImaAdpcm => decode_ima_adpcm(frame, out)?,
        }
        Ok(())
    }

    /// Samples per second of the PCM [`decode`](Self::decode) produces.
    pub fn sample_rate(&self) -> u32 {
        NARROW_BAND_RATE
    }
}

// ---------------------------------------------------------------------------------------
// G.711 (ITU-T G.711): 256-entry tables built at compile time.

const fn alaw_to_linear(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mut t = ((a & 0x0f) as i16) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => {
            t += 0x108;
            t <<= seg - 1;
        }
    }
    if a & 0x80 != 0 {
        t
    } else {
        -t
    }
}

const fn ulaw_to_linear(code: u8) -> i16 {
    let u = !code;
    let mut t = (((u & 0x0f) as i16) << 3) + 0x84;
    t <<= (u & 0x70) >> 4;
    if u & 0x80 != 0 {
        0x84 - t
    } else {
        t - 0x84
    }
}

const fn g711_table(alaw: bool) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = if alaw {
            alaw_to_linear(i as u8)
        } else {
            ulaw_to_linear(i as u8)
        };
        i += 1;
    }
    table
}

static ALAW_TO_LINEAR: [i16; 256] = g711_table(true);
static ULAW_TO_LINEAR: [i16; 256] = g711_table(false);

// ---------------------------------------------------------------------------------------
// IMA (DVI) ADPCM.

const IMA_INDEX_ADJUST: [i8; 16] = [-1, -1, -1, -1, 2, 4, 6, 8, -1, -1, -1, -1, 2, 4, 6, 8];

const IMA_STEP: [i32; 89] = [
    7, 8, 9, 10, 11, 12, 13, 14, 16, 17, 19, 21, 23, 25, 28, 31, 34, 37, 41, 45, 50, 55, 60, 66,
    73, 80, 88, 97, 107, 118, 130, 143, 157, 173, 190, 209, 230, 253, 279, 307, 337, 371, 408, 449,
    494, 544, 598, 658, 724, 796, 876, 963, 1060, 1166, 1282, 1411, 1552, 1707, 1878, 2066, 2272,
    2499, 2749, 3024, 3327, 3660, 4026, 4428, 4871, 5358, 5894, 6484, 7132, 7845, 8630, 9493,
    10442, 11487, 12635, 13899, 15289, 16818, 18500, 20350, 22385, 24623, 27086, 29794, 32767,
];

fn decode_ima_adpcm(frame: &[u8], out: &mut Vec<i16>) -> Result<(), AudioError> {
    let [p0, p1, index, _reserved, codes @ ..] = frame else {
        return Err(AudioError::AdpcmHeaderMissing(frame.len()));
    };
    if usize::from(*index) >= IMA_STEP.len() {
        return Err(AudioError::AdpcmStepIndex(*index));
    }
    let mut predictor = i32::from(i16::from_le_bytes([*p0, *p1]));
    let mut index = usize::from(*index);
    out.reserve(codes.len() * 2);
    for &byte in codes {
        for code in [byte >> 4, byte & 0x0f] {
            // The reference's shifts rather than (2*code+1)*step/8: they round differently,
            // and encoders follow the reference.
            let step = IMA_STEP[index];
            let mut diff = step >> 3;
            if code & 4 != 0 {
                diff += step;
            }
            if code & 2 != 0 {
                diff += step >> 1;
            }
            if code & 1 != 0 {
                diff += step >> 2;
            }
            predictor = if code & 8 != 0 {
                (predictor - diff).max(i32::from(i16::MIN))
            } else {
                (predictor + diff).min(i32::from(i16::MAX))
            };
            index = index
                .saturating_add_signed(IMA_INDEX_ADJUST[usize::from(code)].into())
                .min(IMA_STEP.len() - 1);
            out.push(predictor as i16);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// G.726 (ITU-T G.726, the algorithm of its reference implementation).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum G726Rate {
    R16,
    R24,
    R32,
    R40,
}

impl G726Rate {
    fn bits(self) -> u32 {
        match self {
            Self::R16 => 2,
            Self::R24 => 3,
            Self::R32 => 4,
            Self::R40 => 5,
        }
    }

    fn from_bits(bits: usize) -> Option<Self> {
        match bits {
            2 => Some(Self::R16),
            3 => Some(Self::R24),
            4 => Some(Self::R32),
            5 => Some(Self::R40),
            _ => None,
        }
    }

    /// The rate a frame of `len` bytes was sent at, trying 40 ms then 20 ms of 8 kHz audio;
    /// `None` for any other size.
    fn for_frame_len(len: usize) -> Option<Self> {
        let bits = len * 8;
        [320, 160]
            .into_iter()
            .filter(|&samples| bits / samples * samples == bits)
            .find_map(|samples| Self::from_bits(bits / samples))
    }

    /// Log of the quantized difference, per code.
    fn dqln(self) -> &'static [i32] {
        match self {
            Self::R16 => &[116, 365, 365, 116],
            Self::R24 => &[-2048, 135, 273, 373, 373, 273, 135, -2048],
            Self::R32 => &[
                -2048, 4, 135, 213, 273, 323, 373, 425, 425, 373, 323, 273, 213, 135, 4, -2048,
            ],
            Self::R40 => &[
                -2048, -66, 28, 104, 169, 224, 274, 318, 358, 395, 429, 459, 488, 514, 539, 566,
                566, 539, 514, 488, 459, 429, 395, 358, 318, 274, 224, 169, 104, 28, -66, -2048,
            ],
        }
    }

    /// Scale factor multiplier, per code (already scaled by 32).
    fn wi(self) -> &'static [i32] {
        match self {
            Self::R16 => &[-704, 14048, 14048, -704],
            Self::R24 => &[-128, 960, 4384, 18624, 18624, 4384, 960, -128],
            Self::R32 => &[
                -384, 576, 1312, 2048, 3584, 6336, 11360, 35904, 35904, 11360, 6336, 3584, 2048,
                1312, 576, -384,
            ],
            Self::R40 => &[
                448, 448, 768, 1248, 1280, 1312, 1856, 3200, 4512, 5728, 7008, 8960, 11456, 14080,
                16928, 22272, 22272, 16928, 14080, 11456, 8960, 7008, 5728, 4512, 3200, 1856, 1312,
                1280, 1248, 768, 448, 448,
            ],
        }
    }

    /// Rate-of-change indicator, per code.
    fn fi(self) -> &'static [i32] {
        match self {
            Self::R16 => &[0x000, 0xE00, 0xE00, 0x000],
            Self::R24 => &[0, 0x200, 0x400, 0xE00, 0xE00, 0x400, 0x200, 0],
            Self::R32 => &[
                0, 0, 0, 0x200, 0x200, 0x200, 0x600, 0xE00, 0xE00, 0x600, 0x200, 0x200, 0x200, 0,
                0, 0,
            ],
            Self::R40 => &[
                0, 0, 0, 0, 0, 0x200, 0x200, 0x200, 0x200, 0x200, 0x400, 0x600, 0x800, 0xA00,
                0xC00, 0xC00, 0xC00, 0xC00, 0xA00, 0x800, 0x600, 0x400, 0x200, 0x200, 0x200, 0x200,
                0x200, 0, 0, 0, 0, 0,
            ],
        }
    }
}

/// The adaptive predictor and quantizer state, in the reference's fixed-point units.
#[derive(Debug, Clone)]
struct G726State {
    rate: G726Rate,
    /// Locked (steady-state) step size multiplier.
    yl: i32,
    /// Unlocked (non-steady) step size multiplier.
    yu: i32,
    /// Short- and long-term energy estimates.
    dms: i32,
    dml: i32,
    /// Weighting of `yl` against `yu`.
    ap: i32,
    /// Pole and zero predictor coefficients.
    a: [i32; 2],
    b: [i32; 6],
    /// Signs of the last two partially reconstructed signals.
    pk: [i32; 2],
    /// The last six quantized differences and two reconstructed signals, in the
    /// reference's 11-bit floating-point format.
    dq: [i32; 6],
    sr: [i32; 2],
    /// Tone detected.
    td: bool,
}

/// Index of the first power of two above `value`: its bit length, at most 15.
fn quan_pow2(value: i32) -> i32 {
    (0..15).find(|&i| value < (1 << i)).unwrap_or(15)
}

/// The 11-bit float (sign, 4-bit exponent, 6-bit mantissa) of a 16-bit magnitude.
fn to_float(mag: i32, negative: bool) -> i32 {
    let exp = quan_pow2(mag);
    let float = (exp << 6) + ((mag << 6) >> exp);
    if negative {
        float - 0x400
    } else {
        float
    }
}

/// A predictor coefficient times a value in the 11-bit float format.
fn fmult(an: i32, srn: i32) -> i32 {
    let anmag = if an > 0 { an } else { (-an) & 0x1FFF };
    let anexp = quan_pow2(anmag) - 6;
    let anmant = if anmag == 0 {
        32
    } else if anexp >= 0 {
        anmag >> anexp
    } else {
        anmag << -anexp
    };
    let wanexp = anexp + ((srn >> 6) & 0xF) - 13;
    let wanmant = (anmant * (srn & 0x3F) + 0x30) >> 4;
    let product = if wanexp >= 0 {
        (wanmant << wanexp) & 0x7FFF
    } else {
        wanmant >> -wanexp
    };
    if (an ^ srn) < 0 {
        -product
    } else {
        product
    }
}

impl G726State {
    fn new(rate: G726Rate) -> Self {
        Self {
            rate,
            yl: 34816,
            yu: 544,
            dms: 0,
            dml: 0,
            ap: 0,
            a: [0; 2],
            b: [0; 6],
            pk: [0; 2],
            dq: [32; 6],
            sr: [32; 2],
            td: false,
        }
    }

    /// Decodes codewords packed from the least significant bit of each byte.
    fn decode_le(&mut self, frame: &[u8], out: &mut Vec<i16>) {
        let bits = self.rate.bits();
        let mask = (1u32 << bits) - 1;
        out.reserve(frame.len() * 8 / bits as usize);
        let mut acc = 0u32;
        let mut have = 0u32;
        for &byte in frame {
            acc |= u32::from(byte) << have;
            have += 8;
            while have >= bits {
                let code = (acc & mask) as usize;
                acc >>= bits;
                have -= bits;
                out.push(self.decode_code(code));
            }
        }
    }

    fn step_size(&self) -> i32 {
        if self.ap >= 256 {
            return self.yu;
        }
        let mut y = self.yl >> 6;
        let dif = self.yu - y;
        let al = self.ap >> 2;
        if dif > 0 {
            y += (dif * al) >> 6;
        } else if dif < 0 {
            y += (dif * al + 0x3F) >> 6;
        }
        y
    }

    fn decode_code(&mut self, code: usize) -> i16 {
        let rate = self.rate;
        let sign_bit = 1usize << (rate.bits() - 1);
        let sezi: i32 = (0..6).map(|i| fmult(self.b[i] >> 2, self.dq[i])).sum();
        let sez = sezi >> 1;
        let sei = sezi + fmult(self.a[1] >> 2, self.sr[1]) + fmult(self.a[0] >> 2, self.sr[0]);
        let se = sei >> 1;
        let y = self.step_size();

        // Codes are always below 2^bits, and every table has 2^bits entries.
        let dqln = rate.dqln().get(code).copied().unwrap_or(0);
        let dq = reconstruct(code & sign_bit != 0, dqln, y);
        let sr = if dq < 0 { se - (dq & 0x3FFF) } else { se + dq };
        let dqsez = sr - se + sez;
        let wi = rate.wi().get(code).copied().unwrap_or(0);
        let fi = rate.fi().get(code).copied().unwrap_or(0);
        self.update(y, wi, fi, dq, sr, dqsez);
        // sr has a 14-bit range.
        (sr << 2).clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
    }

    fn update(&mut self, y: i32, wi: i32, fi: i32, dq: i32, sr: i32, dqsez: i32) {
        let pk0 = i32::from(dqsez < 0);
        let mag = dq & 0x7FFF;

        // Transition detection.
        let ylint = self.yl >> 15;
        let ylfrac = (self.yl >> 10) & 0x1F;
        let thr1 = (32 + ylfrac) << ylint;
        let thr2 = if ylint > 9 { 31 << 10 } else { thr1 };
        let dqthr = (thr2 + (thr2 >> 1)) >> 1;
        let transition = self.td && mag > dqthr;

        // Quantizer scale factor adaptation.
        self.yu = (y + ((wi - y) >> 5)).clamp(544, 5120);
        self.yl += self.yu + ((-self.yl) >> 6);

        // Adaptive predictor coefficients.
        let mut a2p = 0;
        if transition {
            self.a = [0; 2];
            self.b = [0; 6];
        } else {
            let pks1 = pk0 ^ self.pk[0];
            a2p = self.a[1] - (self.a[1] >> 7);
            if dqsez != 0 {
                let fa1 = if pks1 != 0 { self.a[0] } else { -self.a[0] };
                if fa1 < -8191 {
                    a2p -= 0x100;
                } else if fa1 > 8191 {
                    a2p += 0xFF;
                } else {
                    a2p += fa1 >> 5;
                }
                if pk0 ^ self.pk[1] != 0 {
                    if a2p <= -12160 {
                        a2p = -12288;
                    } else if a2p >= 12416 {
                        a2p = 12288;
                    } else {
                        a2p -= 0x80;
                    }
                } else if a2p <= -12416 {
                    a2p = -12288;
                } else if a2p >= 12160 {
                    a2p = 12288;
                } else {
                    a2p += 0x80;
                }
            }
            self.a[1] = a2p;

            self.a[0] -= self.a[0] >> 8;
            if dqsez != 0 {
                if pks1 == 0 {
                    self.a[0] += 192;
                } else {
                    self.a[0] -= 192;
                }
            }
            let a1ul = 15360 - a2p;
            self.a[0] = self.a[0].clamp(-a1ul, a1ul);

            let leak = if self.rate == G726Rate::R40 { 9 } else { 8 };
            for (b, dqn) in self.b.iter_mut().zip(self.dq) {
                *b -= *b >> leak;
                if mag != 0 {
                    if (dq ^ dqn) >= 0 {
                        *b += 128;
                    } else {
                        *b -= 128;
                    }
                }
            }
        }

        self.dq.copy_within(0..5, 1);
        self.dq[0] = if mag == 0 {
            if dq >= 0 {
                0x20
            } else {
                0x20 - 0x400
            }
        } else {
            to_float(mag, dq < 0)
        };

        self.sr[1] = self.sr[0];
        self.sr[0] = if sr == 0 {
            0x20
        } else if sr > 0 {
            to_float(sr, false)
        } else if sr > -32768 {
            to_float(-sr, true)
        } else {
            0x20 - 0x400
        };

        self.pk = [pk0, self.pk[0]];

        // Tone detection.
        self.td = !transition && a2p < -11776;

        // Adaptation speed control.
        self.dms += (fi - self.dms) >> 5;
        self.dml += ((fi << 2) - self.dml) >> 7;
        self.ap = if transition {
            256
        } else if y < 1536 || self.td || ((self.dms << 2) - self.dml).abs() >= (self.dml >> 3) {
            self.ap + ((0x200 - self.ap) >> 4)
        } else {
            self.ap + ((-self.ap) >> 4)
        };
    }
}

/// The quantized difference from its log and the step size, as a sign-magnitude value
/// whose negative form is the magnitude minus 2^15.
fn reconstruct(negative: bool, dqln: i32, y: i32) -> i32 {
    let dql = dqln + (y >> 2);
    if dql < 0 {
        return if negative { -0x8000 } else { 0 };
    }
    let dex = (dql >> 7) & 15;
    let dqt = 128 + (dql & 127);
    let dq = (dqt << 7) >> (14 - dex);
    if negative {
        dq - 0x8000
    } else {
        dq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// Runs ffmpeg with `input` on stdin and returns its stdout.
    fn ffmpeg(args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin"].iter().chain(args))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("these tests compare with ffmpeg: install ffmpeg (Debian package ffmpeg)");
        let mut stdin = child.stdin.take().expect("ffmpeg stdin is piped");
        let input = input.to_vec();
        let writer = std::thread::spawn(move || {
            // ffmpeg with a generated input never reads stdin and may exit first.
            let _ = stdin.write_all(&input);
        });
        let output = child.wait_with_output().expect("ffmpeg runs to the end");
        writer.join().expect("stdin writer does not panic");
        assert!(
            output.status.success(),
            "ffmpeg {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    fn s16le(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    /// Two seconds of a tone sweeping 200 Hz to 3 kHz with a second tone under it: enough
    /// movement to drive every adaptive path of the ADPCM codecs.
    const SWEEP: &str = "aevalsrc=0.5*sin(2*PI*(200+700*t)*t)+0.2*sin(2*PI*1234*t):s=8000:d=2";

    fn decode_all(codec: DeviceAudioCodec, frames: impl IntoIterator<Item = Vec<u8>>) -> Vec<i16> {
        let mut decoder = AudioDecoder::new(codec).expect("a PCM decoder");
        let mut pcm = Vec::new();
        for frame in frames {
            decoder.decode(&frame, &mut pcm).expect("frame decodes");
        }
        pcm
    }

    /// Signal-to-noise ratio of `test` against `reference`, in dB.
    fn snr_db(reference: &[i16], test: &[i16]) -> f64 {
        let pairs = || {
            reference
                .iter()
                .zip(test)
                .map(|(&r, &t)| (f64::from(r), f64::from(t)))
        };
        let signal: f64 = pairs().map(|(r, _)| r * r).sum();
        let noise: f64 = pairs().map(|(r, t)| (r - t) * (r - t)).sum();
        10.0 * (signal / noise).log10()
    }

    #[test]
    fn strip_hisilicon_removes_a_consistent_prefix() {
        let mut frame = vec![0x00, 0x01, 0x52, 0x00];
        frame.extend((0..164).map(|i| i as u8));
        assert_eq!(strip_hisilicon(&frame), &frame[4..]);
    }

    #[test]
    fn strip_hisilicon_reads_the_word_count_as_little_endian_u16() {
        let mut frame = vec![0x00, 0x01, 0x00, 0x01];
        frame.extend(std::iter::repeat_n(0xd5, 512));
        assert_eq!(strip_hisilicon(&frame).len(), 512);
    }

    #[test]
    fn strip_hisilicon_keeps_a_frame_whose_length_disagrees() {
        let frame = [0x00, 0x01, 0x52, 0x00, 0xd5, 0xd5];
        assert_eq!(strip_hisilicon(&frame), &frame);
    }

    #[test]
    fn strip_hisilicon_keeps_a_frame_too_short_for_the_prefix() {
        assert_eq!(strip_hisilicon(&[0x00, 0x01, 0x00]), &[0x00, 0x01, 0x00]);
    }

    #[test]
    fn payload_types_map_to_codecs() {
        let mapped: Vec<_> = [6, 7, 8, 19, 24, 26, 98]
            .into_iter()
            .map(DeviceAudioCodec::from_payload_type)
            .collect();
        assert_eq!(
            mapped,
            [
                Some(DeviceAudioCodec::G711A),
                Some(DeviceAudioCodec::G711U),
                Some(DeviceAudioCodec::G726),
                Some(DeviceAudioCodec::Aac),
                Some(DeviceAudioCodec::Aac),
                Some(DeviceAudioCodec::ImaAdpcm),
                None,
            ]
        );
    }

    #[test]
    fn aac_has_no_decoder() {
        assert!(AudioDecoder::new(DeviceAudioCodec::Aac).is_none());
    }

    #[test]
    fn decoders_report_8_khz() {
        let decoder = AudioDecoder::new(DeviceAudioCodec::G726).expect("a PCM decoder");
        assert_eq!(decoder.sample_rate(), 8000);
    }

    #[test]
    fn g711a_matches_ffmpeg_for_every_code() {
        let codes: Vec<u8> = (0..=255).collect();
        let expected = s16le(&ffmpeg(
            &[
                "-f", "alaw", "-ar", "8000", "-ac", "1", "-i", "-", "-f", "s16le", "-",
            ],
            &codes,
        ));
        assert_eq!(decode_all(DeviceAudioCodec::G711A, [codes]), expected);
    }

    #[test]
    fn g711u_matches_ffmpeg_for_every_code() {
        let codes: Vec<u8> = (0..=255).collect();
        let expected = s16le(&ffmpeg(
            &[
                "-f", "mulaw", "-ar", "8000", "-ac", "1", "-i", "-", "-f", "s16le", "-",
            ],
            &codes,
        ));
        assert_eq!(decode_all(DeviceAudioCodec::G711U, [codes]), expected);
    }

    /// The vector's codewords, cut into 40 ms device frames (so the rate comes from the
    /// frame size and the state carries across frames), must decode to the ITU reference's
    /// PCM sample for sample.
    fn assert_g726_matches_reference(coded: &[u8], reference: &[u8], bits: usize) {
        let frame_len = 320 * bits / 8;
        let frames = coded.chunks(frame_len).map(<[u8]>::to_vec);
        let ours = decode_all(DeviceAudioCodec::G726, frames);
        let expected = s16le(reference);
        assert_eq!(ours.len(), expected.len(), "sample count");
        let first_difference = ours.iter().zip(&expected).position(|(a, b)| a != b);
        assert_eq!(
            first_difference, None,
            "first sample differing from the reference"
        );
    }

    #[test]
    fn g726_16k_matches_the_itu_reference_decoder() {
        assert_g726_matches_reference(
            include_bytes!("../../tests/vectors/g726/sweep-16k.g726le"),
            include_bytes!("../../tests/vectors/g726/sweep-16k.s16le"),
            2,
        );
    }

    #[test]
    fn g726_24k_matches_the_itu_reference_decoder() {
        assert_g726_matches_reference(
            include_bytes!("../../tests/vectors/g726/sweep-24k.g726le"),
            include_bytes!("../../tests/vectors/g726/sweep-24k.s16le"),
            3,
        );
    }

    #[test]
    fn g726_32k_matches_the_itu_reference_decoder() {
        assert_g726_matches_reference(
            include_bytes!("../../tests/vectors/g726/sweep-32k.g726le"),
            include_bytes!("../../tests/vectors/g726/sweep-32k.s16le"),
            4,
        );
    }

    #[test]
    fn g726_40k_matches_the_itu_reference_decoder() {
        assert_g726_matches_reference(
            include_bytes!("../../tests/vectors/g726/sweep-40k.g726le"),
            include_bytes!("../../tests/vectors/g726/sweep-40k.s16le"),
            5,
        );
    }

    /// ffmpeg's G.726 approximates the standard, so its PCM is a yardstick, not a reference:
    /// decoding what its `g726le` encoder made, we must be about as close to the source as
    /// its own decoder is (which also proves the bit packing is the one `g726le` names).
    #[test]
    fn g726_32k_from_ffmpeg_decodes_as_well_as_ffmpeg_does() {
        let source = s16le(&ffmpeg(
            &["-f", "lavfi", "-i", SWEEP, "-f", "s16le", "-"],
            &[],
        ));
        let coded = ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                SWEEP,
                "-c:a",
                "adpcm_g726le",
                "-b:a",
                "32k",
                "-f",
                "g726le",
                "-",
            ],
            &[],
        );
        let by_ffmpeg = s16le(&ffmpeg(
            &[
                "-f",
                "g726le",
                "-code_size",
                "4",
                "-ar",
                "8000",
                "-i",
                "-",
                "-f",
                "s16le",
                "-",
            ],
            &coded,
        ));
        let ours = decode_all(
            DeviceAudioCodec::G726,
            coded.chunks(160).map(<[u8]>::to_vec),
        );
        let (ours_db, ffmpeg_db) = (snr_db(&source, &ours), snr_db(&source, &by_ffmpeg));
        assert!(
            ours_db > ffmpeg_db - 2.0,
            "ours {ours_db:.1} dB, ffmpeg's {ffmpeg_db:.1} dB"
        );
    }

    #[test]
    fn g726_rate_follows_the_frame_size() {
        let rates: Vec<_> = [80, 120, 160, 200, 40, 60, 100, 77]
            .into_iter()
            .map(G726Rate::for_frame_len)
            .collect();
        assert_eq!(
            rates,
            [
                Some(G726Rate::R16),
                Some(G726Rate::R24),
                Some(G726Rate::R32),
                Some(G726Rate::R40),
                Some(G726Rate::R16),
                Some(G726Rate::R24),
                Some(G726Rate::R40),
                None,
            ]
        );
    }

    /// Frames of sizes that name no rate (here 150 and 10 bytes) are decoded at the rate in
    /// use with the state carried on: the 32 kbit/s vector still decodes exactly.
    #[test]
    fn g726_frame_of_unknown_size_keeps_the_rate_in_use() {
        let coded: &[u8] = include_bytes!("../../tests/vectors/g726/sweep-32k.g726le");
        let (head, tail) = coded.split_at(coded.len() - 160);
        let mut frames: Vec<Vec<u8>> = head.chunks(160).map(<[u8]>::to_vec).collect();
        frames.push(tail[..150].to_vec());
        frames.push(tail[150..].to_vec());
        let ours = decode_all(DeviceAudioCodec::G726, frames);
        let expected = s16le(include_bytes!("../../tests/vectors/g726/sweep-32k.s16le"));
        assert_eq!(ours, expected);
    }

    /// ffmpeg's Simon & Schuster IMA variant stores the codes high nibble first with the
    /// reference's shift-and-add expansion, starting from predictor 0 and step index 0:
    /// exactly a device frame with an all-zero state header.
    #[test]
    fn ima_adpcm_matches_ffmpeg_reference_expansion() {
        // The KVAG muxer seeks back to write its header, so it needs a file.
        let path = std::env::temp_dir().join(format!("iothub-ima-ssi-{}.vag", std::process::id()));
        let path_str = path.to_str().expect("temp path is UTF-8");
        ffmpeg(
            &[
                "-y",
                "-f",
                "lavfi",
                "-i",
                SWEEP,
                "-c:a",
                "adpcm_ima_ssi",
                "-f",
                "kvag",
                path_str,
            ],
            &[],
        );
        let vag = std::fs::read(&path).expect("ffmpeg wrote the KVAG file");
        let _ = std::fs::remove_file(&path);
        let expected = s16le(&ffmpeg(
            &["-f", "kvag", "-i", "-", "-f", "s16le", "-"],
            &vag,
        ));
        // KVAG: magic, data size, sample rate, stereo flag.
        let codes = vag.get(14..).expect("KVAG header is 14 bytes");
        let mut frame = vec![0, 0, 0, 0];
        frame.extend_from_slice(codes);
        let ours = decode_all(DeviceAudioCodec::ImaAdpcm, [frame]);
        assert_eq!(ours.len(), 16000, "sample count");
        assert_eq!(ours, expected);
    }

    /// ffmpeg's IMA WAV blocks start with the same 4-byte state the devices send, so each
    /// block, nibbles swapped into device order, is a device frame. ffmpeg emits the seed as
    /// a sample and expands codes with a multiply that rounds differently (by at most 3), so
    /// only the first sample after the seed is compared: it proves the state header is read
    /// right.
    #[test]
    fn ima_adpcm_seeds_each_frame_from_its_state_header() {
        const BLOCK: usize = 256;
        let wav = ffmpeg(
            &[
                "-f",
                "lavfi",
                "-i",
                SWEEP,
                "-c:a",
                "adpcm_ima_wav",
                "-block_size",
                "256",
                "-f",
                "wav",
                "-",
            ],
            &[],
        );
        let expected = s16le(&ffmpeg(&["-f", "wav", "-i", "-", "-f", "s16le", "-"], &wav));
        let data = wav
            .windows(4)
            .position(|w| w == b"data")
            .expect("WAV has a data chunk")
            + 8;
        let blocks: Vec<&[u8]> = wav[data..].chunks_exact(BLOCK).collect();
        assert!(blocks.len() >= 30, "only {} blocks", blocks.len());
        let samples_per_block = 1 + (BLOCK - 4) * 2;
        let mut decoder = AudioDecoder::new(DeviceAudioCodec::ImaAdpcm).expect("a PCM decoder");
        let mut misses = Vec::new();
        for (n, block) in blocks.iter().enumerate() {
            let mut frame = block[..4].to_vec();
            frame.extend(block[4..].iter().map(|b| b.rotate_left(4)));
            let mut ours = Vec::new();
            decoder.decode(&frame, &mut ours).expect("frame decodes");
            let theirs = expected[n * samples_per_block + 1];
            if ours.first().is_none_or(|s| s.abs_diff(theirs) > 3) {
                misses.push((n, ours.first().copied(), theirs));
            }
        }
        assert_eq!(misses, [], "(block, our first sample, ffmpeg's)");
    }

    #[test]
    fn ima_adpcm_decodes_two_samples_per_byte_after_the_state() {
        // Predictor 1000, step index 10 (step 19): code 7 adds 2+19+9+4 = 34; the index
        // moves to 18 (step 41) and code 0xF subtracts 5+41+20+10 = 76.
        let pcm = decode_all(DeviceAudioCodec::ImaAdpcm, [vec![0xe8, 0x03, 10, 0, 0x7f]]);
        assert_eq!(pcm, [1034, 958]);
    }

    #[test]
    fn ima_adpcm_rejects_a_frame_without_state() {
        let mut decoder = AudioDecoder::new(DeviceAudioCodec::ImaAdpcm).expect("a PCM decoder");
        let result = decoder.decode(&[0x00, 0x00, 0x00], &mut Vec::new());
        assert_eq!(result, Err(AudioError::AdpcmHeaderMissing(3)));
    }

    #[test]
    fn ima_adpcm_rejects_a_step_index_past_the_table() {
        let mut decoder = AudioDecoder::new(DeviceAudioCodec::ImaAdpcm).expect("a PCM decoder");
        let result = decoder.decode(&[0x00, 0x00, 89, 0x00, 0x12], &mut Vec::new());
        assert_eq!(result, Err(AudioError::AdpcmStepIndex(89)));
    }
}
