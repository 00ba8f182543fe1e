//! Transports that drive the `rpc-core` state machines over real I/O.
