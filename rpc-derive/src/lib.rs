//! Procedural macros of the RPC framework. Use them through `rpc_core`, which re-exports them.
#![forbid(unsafe_code)]
