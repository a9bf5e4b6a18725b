//! AAC as dashcams send it over JT/T 1078 (payload types 19 and 24): ADTS frames, each a
//! 7- or 9-byte header before the raw AAC data. FLV wants the raw data and, once, the
//! AudioSpecificConfig the header describes.

/// One ADTS frame: its AudioSpecificConfig (2 bytes) and its raw AAC data. `None` when
/// `frame` does not start with a consistent ADTS header.
pub fn split(frame: &[u8]) -> Option<([u8; 2], &[u8])> {
    if frame.len() < 7 || frame[0] != 0xFF || frame[1] & 0xF0 != 0xF0 {
        return None;
    }
    let protection_absent = frame[1] & 0x01 == 1;
    let profile = (frame[2] >> 6) & 0x03;
    let sampling_index = (frame[2] >> 2) & 0x0F;
    let channels = ((frame[2] & 0x01) << 2) | (frame[3] >> 6);
    let frame_length = (usize::from(frame[3] & 0x03) << 11)
        | (usize::from(frame[4]) << 3)
        | usize::from(frame[5] >> 5);
    let header = if protection_absent { 7 } else { 9 };
    if sampling_index > 12 || frame_length < header || frame_length > frame.len() {
        return None;
    }
    let object_type = profile + 1;
    let config = [
        (object_type << 3) | (sampling_index >> 1),
        ((sampling_index & 1) << 7) | (channels << 3),
    ];
    Some((config, &frame[header..frame_length]))
}

#[cfg(test)]
mod tests {
    use super::split;

    /// An ADTS header FFmpeg writes for AAC-LC, 8 kHz, mono, a 10-byte frame
    /// (`-c:a aac -ar 8000 -ac 1 -f adts`).
    const FRAME: [u8; 10] = [0xFF, 0xF1, 0x6C, 0x40, 0x01, 0x5F, 0xFC, 0x01, 0x02, 0x03];

    #[test]
    fn the_config_names_aac_lc_at_8_khz_mono() {
        // object type 2 (LC), sampling index 11 (8,000 Hz), channel configuration 1.
        assert_eq!(split(&FRAME).map(|(c, _)| c), Some([0x15, 0x88]));
    }

    #[test]
    fn the_raw_data_follows_the_7_byte_header() {
        assert_eq!(split(&FRAME).map(|(_, raw)| raw), Some(&FRAME[7..]));
    }

    #[test]
    fn a_frame_shorter_than_its_header_says_is_refused() {
        assert_eq!(split(&FRAME[..9]), None);
    }

    #[test]
    fn bytes_without_the_sync_word_are_refused() {
        assert_eq!(split(&[0x00; 10]), None);
    }
}
