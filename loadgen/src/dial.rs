//! Opening a simulated device's connection: from a chosen local source address (so one
//! machine can hold more connections to one hub port than one address allows) and within a
//! time limit. Shared by trackers and terminals, which wrap the outcome in their own errors.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Why a connection could not be opened.
#[derive(Debug)]
pub enum DialError {
    Io(io::Error),
    TimedOut,
}

/// Connects to `addr`, bound to `source_ip` when given, giving up after `timeout`.
pub async fn dial(
    addr: SocketAddr,
    source_ip: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(DialError::Io)?;
    if let Some(ip) = source_ip {
        socket.bind(SocketAddr::new(ip, 0)).map_err(DialError::Io)?;
    }
    match tokio::time::timeout(timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(DialError::Io(e)),
        Err(_) => Err(DialError::TimedOut),
    }
}
