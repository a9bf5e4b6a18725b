//! GT06 channel: login gating, acknowledgements, events, online commands.
