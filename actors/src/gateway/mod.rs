//! Device gateways: a listener per protocol port and one DeviceSession actor per connection.

pub mod control;
