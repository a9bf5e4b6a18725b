//! Device gateways: a listener per protocol port and one DeviceSession actor per connection.
//! Everything here is protocol-generic; a protocol plugs in through `iothub::protocol::Protocol`.

pub mod control;
pub mod listener;
pub mod proxy_protocol;
pub mod registrations;
pub mod session;
