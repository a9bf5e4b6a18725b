//! The PROXY protocol header a layer-4 balancer puts before a device's first byte to name
//! the device's own address (text v1 as nginx `proxy_protocol on` sends it, binary v2 as
//! cloud balancers do). Behind a balancer every connection comes from the balancer's
//! address; with the header the hub logs the device's. The header is read to its last byte
//! and not one byte further, so the session reads the device's bytes from the start.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use proxy_header::{ParseConfig, ProxyHeader};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a connection may take to send its whole header. A balancer sends it with the
/// connection's first segment; the bound keeps a connection that sends nothing (or part of a
/// header) from holding its place in the connection budget.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest header taken: a v1 header is at most 107 bytes; v2 is 16 bytes, 12 or 36 of
/// addresses and the TLVs a balancer adds (cloud balancers add an endpoint or link id of a
/// few dozen bytes).
pub const MAX_HEADER_LEN: usize = 512;

/// Pause between two looks at a header that has only partly arrived.
const PARTIAL_HEADER_PAUSE: Duration = Duration::from_millis(10);

/// What the first bytes of a connection hold.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A whole header of `len` bytes naming the client's address; `None` when it names none
    /// (v2 LOCAL, the balancer's own health check, or v1 UNKNOWN).
    Header {
        source: Option<SocketAddr>,
        len: usize,
    },
    /// The start of a header; more bytes are needed.
    Partial,
    /// Not a PROXY header, or one longer than [`MAX_HEADER_LEN`].
    Invalid,
}

/// Reads `bytes` as the start of a connection.
pub fn parse(bytes: &[u8]) -> Parsed {
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: true,
    };
    match ProxyHeader::parse(bytes, config) {
        Ok((header, len)) if len <= MAX_HEADER_LEN => Parsed::Header {
            source: header.proxied_address().map(|a| a.source),
            len,
        },
        Err(proxy_header::Error::BufferTooShort) if bytes.len() < MAX_HEADER_LEN => Parsed::Partial,
        _ => Parsed::Invalid,
    }
}

/// Why a connection's header was not taken.
#[derive(Debug)]
pub enum HeaderError {
    /// The connection closed before sending a byte (a balancer's or a port scanner's probe).
    ClosedEmpty,
    /// The first bytes are no PROXY header.
    Invalid,
    Io(io::Error),
}

/// Reads the PROXY header at the start of `stream`, leaving every byte after it unread;
/// returns the source address it names. Not bounded in time: the caller applies
/// [`HEADER_TIMEOUT`].
pub async fn read_header(stream: &mut TcpStream) -> Result<Option<SocketAddr>, HeaderError> {
    let mut buf = [0u8; MAX_HEADER_LEN];
    loop {
        // Peeking leaves the bytes in the socket, so only the header's own are read below.
        let seen = stream.peek(&mut buf).await.map_err(HeaderError::Io)?;
        if seen == 0 {
            return Err(HeaderError::ClosedEmpty);
        }
        match parse(&buf[..seen]) {
            Parsed::Header { source, len } => {
                stream
                    .read_exact(&mut buf[..len])
                    .await
                    .map_err(HeaderError::Io)?;
                return Ok(source);
            }
            // A peek returns at once while any byte is waiting, so wait before looking again.
            Parsed::Partial => tokio::time::sleep(PARTIAL_HEADER_PAUSE).await,
            Parsed::Invalid => return Err(HeaderError::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// nginx `proxy_protocol on` for a device at 192.0.2.10:40001 reaching port 21100.
    const V1_TCP4: &[u8] = b"PROXY TCP4 192.0.2.10 203.0.113.5 40001 21100\r\n";
    const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::10 2001:db8::5 40001 21100\r\n";
    const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

    /// v2 PROXY over TCP/IPv4, the same addresses as [`V1_TCP4`].
    const V2_TCP4: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // TCP over IPv4
        0x00, 0x0c, // 12 bytes of addresses
        192, 0, 2, 10, // source
        203, 0, 113, 5, // destination
        0x9c, 0x41, // source port 40001
        0x52, 0x6c, // destination port 21100
    ];

    /// v2 LOCAL: the balancer's own health check, no addresses.
    const V2_LOCAL: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x20, 0x00, 0x00,
        0x00,
    ];

    /// The reference GT06 login (IMEI 0864717003283581), the device's first bytes after the
    /// header.
    const GT06_LOGIN: &[u8] = &[
        0x78, 0x78, 0x0d, 0x01, 0x08, 0x64, 0x71, 0x70, 0x03, 0x28, 0x35, 0x81, 0x00, 0x09, 0x3f,
        0x04, 0x0d, 0x0a,
    ];

    fn device() -> SocketAddr {
        "192.0.2.10:40001".parse().unwrap()
    }

    fn with_login(header: &[u8]) -> Vec<u8> {
        [header, GT06_LOGIN].concat()
    }

    #[test]
    fn v1_names_the_device() {
        assert_eq!(
            parse(&with_login(V1_TCP4)),
            Parsed::Header {
                source: Some(device()),
                len: V1_TCP4.len()
            }
        );
    }

    #[test]
    fn v1_over_ipv6_names_the_device() {
        assert_eq!(
            parse(V1_TCP6),
            Parsed::Header {
                source: Some("[2001:db8::10]:40001".parse().unwrap()),
                len: V1_TCP6.len()
            }
        );
    }

    #[test]
    fn v1_unknown_names_no_one() {
        assert_eq!(
            parse(&with_login(V1_UNKNOWN)),
            Parsed::Header {
                source: None,
                len: V1_UNKNOWN.len()
            }
        );
    }

    #[test]
    fn v2_names_the_device() {
        assert_eq!(
            parse(&with_login(V2_TCP4)),
            Parsed::Header {
                source: Some(device()),
                len: V2_TCP4.len()
            }
        );
    }

    #[test]
    fn v2_local_names_no_one() {
        assert_eq!(
            parse(V2_LOCAL),
            Parsed::Header {
                source: None,
                len: V2_LOCAL.len()
            }
        );
    }

    #[test]
    fn part_of_a_v1_header_needs_more() {
        assert_eq!(parse(&V1_TCP4[..20]), Parsed::Partial);
    }

    #[test]
    fn part_of_a_v2_header_needs_more() {
        assert_eq!(parse(&V2_TCP4[..20]), Parsed::Partial);
    }

    #[test]
    fn a_device_frame_is_no_header() {
        assert_eq!(parse(GT06_LOGIN), Parsed::Invalid);
    }

    #[test]
    fn a_jt808_frame_is_no_header() {
        assert_eq!(parse(&[0x7e, 0x01, 0x02, 0x00, 0x00]), Parsed::Invalid);
    }

    #[test]
    fn a_v1_line_without_its_end_is_invalid_at_the_v1_maximum() {
        let mut line = b"PROXY TCP4 ".to_vec();
        line.resize(MAX_HEADER_LEN, b'1');
        assert_eq!(parse(&line), Parsed::Invalid);
    }

    #[test]
    fn a_v2_header_longer_than_the_maximum_is_invalid() {
        let mut header = V2_TCP4.to_vec();
        let len = (MAX_HEADER_LEN as u16).to_be_bytes();
        header[14..16].copy_from_slice(&len);
        header.resize(16 + MAX_HEADER_LEN, 0);
        assert_eq!(parse(&header), Parsed::Invalid);
    }

    /// Both ends of a loopback connection.
    async fn connection() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        (accepted, client)
    }

    #[tokio::test]
    async fn reading_a_header_leaves_the_device_bytes_unread() {
        let (mut accepted, mut client) = connection().await;
        client.write_all(&with_login(V2_TCP4)).await.unwrap();
        read_header(&mut accepted).await.unwrap();
        let mut rest = vec![0u8; GT06_LOGIN.len()];
        accepted.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, GT06_LOGIN);
    }

    #[tokio::test]
    async fn a_header_sent_in_two_parts_is_read_whole() {
        let (mut accepted, mut client) = connection().await;
        client.write_all(&V1_TCP4[..10]).await.unwrap();
        let reading = tokio::spawn(async move { read_header(&mut accepted).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(&V1_TCP4[10..]).await.unwrap();
        assert_eq!(reading.await.unwrap().unwrap(), Some(device()));
    }

    #[tokio::test]
    async fn a_connection_closed_before_any_byte_is_told_apart() {
        let (mut accepted, client) = connection().await;
        drop(client);
        assert!(matches!(
            read_header(&mut accepted).await,
            Err(HeaderError::ClosedEmpty)
        ));
    }
}
