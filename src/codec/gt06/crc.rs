//! CRC-ITU as GT06 uses it: CRC-16/X-25 (reflected poly 0x8408, init 0xFFFF, xorout 0xFFFF).
//! A 256-entry table computed at compile time: decoding runs this over every frame.

const TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u16;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

/// CRC-16/X-25 of `data`.
pub fn crc_itu(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc = (crc >> 8) ^ TABLE[((crc ^ u16::from(b)) & 0xFF) as usize];
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_value() {
        assert_eq!(crc_itu(b"123456789"), 0x906E);
    }

    #[test]
    fn login_reply_crc() {
        // 78 78 05 01 00 01 d9 dc 0d 0a: CRC over 05 01 00 01.
        assert_eq!(crc_itu(&[0x05, 0x01, 0x00, 0x01]), 0xD9DC);
    }
}
