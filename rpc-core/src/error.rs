//! Errors a caller sees. Three families are kept apart:
//!
//! - the peer sent garbage or broke the protocol: such datagrams are dropped and counted
//!   ([`crate::wire::WireError`], [`crate::wire::DropCounters`]), never returned to a caller;
//! - a call failed: [`CallError`], one per call, each variant saying whether the call may have
//!   executed;
//! - bytes did not decode as the expected type: [`DecodeError`].

use crate::wire::{BusyReason, ErrorCode};

/// Why a call did not produce a reply value.
///
/// The variants say what is known about execution ([`CallError::may_have_executed`]):
/// `TimedOut`, `OutcomeUnknown` and `PeerDied` may have executed on the server; `NotExecuted`,
/// `ServerBusy`, `ShuttingDown`, `InterfaceMismatch`, `UnknownInterface`, `MessageTooLarge`,
/// `WindowFull`, `AuthMismatch` and `Disconnected` did not, and may be retried; `Remote`
/// depends on its code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No reply arrived by the call's deadline. The server may or may not have executed it.
    #[error("call timed out; it may or may not have executed")]
    TimedOut,
    /// The server lost the call's session (it restarted, or the session expired or was
    /// evicted) while the call was in flight. It may or may not have executed; it will not be
    /// executed again.
    #[error("outcome unknown: the server lost the session while the call was in flight")]
    OutcomeUnknown,
    /// The server never executed the call and never will: the session's acknowledged point
    /// passed it before it arrived (someone acknowledged it on the client's behalf). Safe to
    /// retry.
    #[error("the call was not executed: the server skipped it")]
    NotExecuted,
    /// The server is shutting down; the call did not execute.
    #[error("the server is shutting down; the call did not execute")]
    ShuttingDown,
    /// One side authenticates its datagrams and the other does not (configure the same
    /// pre-shared key on both). The call did not execute.
    #[error("authentication mismatch: the server and the client disagree on the use of a key")]
    AuthMismatch,
    /// The server refused the call for lack of resources until its deadline. A call that is
    /// not idempotent did not execute; an idempotent one may have executed in an earlier
    /// attempt, since the server keeps no record of idempotent calls.
    #[error("server busy ({0:?}); the call did not execute")]
    ServerBusy(BusyReason),
    /// The server serves the interface, but not this method with this signature: the client
    /// and server were built from different versions of the interface.
    #[error(
        "interface mismatch: the server does not know method {method:#010x} of interface {interface:#010x}"
    )]
    InterfaceMismatch {
        /// Interface fingerprint.
        interface: u32,
        /// Method fingerprint.
        method: u32,
    },
    /// The server does not serve the interface at all.
    #[error("the server does not serve interface {interface:#010x}")]
    UnknownInterface {
        /// Interface fingerprint.
        interface: u32,
    },
    /// The server reported an error for the call.
    #[error("remote error: {0}")]
    Remote(RemoteError),
    /// The reply did not decode as the method's return type.
    #[error("reply did not decode: {0}")]
    BadReply(DecodeError),
    /// The request is larger than the client or server accepts. It was not sent.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    MessageTooLarge {
        /// Length of the request body.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many calls in flight to start another one now (or, for a call that waited for
    /// room, before its deadline). It was not sent.
    #[error("too many calls in flight")]
    WindowFull,
    /// The client or its transport was shut down, or its peer died before the call started.
    /// The call did not execute.
    #[error("client disconnected")]
    Disconnected,
    /// The peer process died, hung or broke the transport while the call was in flight
    /// (shared memory sees this through the kernel's locks and a heartbeat). It may have
    /// executed.
    #[error("the peer died while the call was in flight; it may or may not have executed")]
    PeerDied,
    /// The transport failed with an I/O error.
    #[error("i/o error: {0}")]
    Io(std::io::ErrorKind),
}

impl CallError {
    /// Whether the server may have executed the call.
    pub fn may_have_executed(&self) -> bool {
        match self {
            Self::TimedOut
            | Self::OutcomeUnknown
            | Self::PeerDied
            | Self::BadReply(_)
            | Self::Io(_) => true,
            Self::Remote(e) => e.may_have_executed(),
            _ => false,
        }
    }

    /// The error a client reports for an `ErrorReply` with `code`.
    pub fn from_code(code: ErrorCode, interface: u32, method: u32) -> Self {
        match code {
            ErrorCode::UnknownInterface => Self::UnknownInterface { interface },
            ErrorCode::UnknownMethod => Self::InterfaceMismatch { interface, method },
            ErrorCode::ShuttingDown => Self::ShuttingDown,
            ErrorCode::Forgotten => Self::OutcomeUnknown,
            ErrorCode::Skipped => Self::NotExecuted,
            code => Self::Remote(RemoteError { code }),
        }
    }
}

/// An error reported by the server for one call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RemoteError {
    /// What went wrong.
    pub code: ErrorCode,
}

impl RemoteError {
    /// Whether the server may have executed the call.
    pub fn may_have_executed(&self) -> bool {
        matches!(
            self.code,
            ErrorCode::HandlerPanicked
                | ErrorCode::ReplyTooLarge
                | ErrorCode::ReplyUnavailable
                | ErrorCode::Other(_)
        )
    }
}

impl core::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let text = match self.code {
            ErrorCode::UnknownInterface => "unknown interface",
            ErrorCode::UnknownMethod => "unknown method",
            ErrorCode::BadRequest => "the request did not decode as the method's arguments",
            ErrorCode::HandlerPanicked => "the handler panicked",
            ErrorCode::ReplyTooLarge => "the reply exceeds the maximum message size",
            ErrorCode::ReplyUnavailable => {
                "the call executed, but its reply was lost and too large to keep for retransmission"
            }
            ErrorCode::MessageTooLarge => "the request exceeds the server's maximum message size",
            ErrorCode::NotIdempotent => "the request was flagged idempotent but the method is not",
            ErrorCode::ShuttingDown => "the server is shutting down",
            ErrorCode::Forgotten => "the server no longer holds the call's outcome",
            ErrorCode::Skipped => {
                "the server skipped the call: it was acknowledged before it arrived"
            }
            ErrorCode::Other(code) => return write!(f, "unknown error code {code}"),
        };
        f.write_str(text)
    }
}

/// Why bytes did not decode as a value. Decoders return this for every malformed input; they
/// never panic and never allocate more than the input's own length justifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended in the middle of a value.
    #[error("input ended early")]
    Truncated,
    /// Bytes were left over after the last value.
    #[error("trailing bytes after the last value")]
    TrailingBytes,
    /// A string was not valid UTF-8.
    #[error("invalid utf-8")]
    InvalidUtf8,
    /// An enum, `Option`, `Result` or `bool` tag with no meaning.
    #[error("invalid tag {0}")]
    InvalidTag(u32),
    /// A length prefix larger than the bytes that follow it.
    #[error("length prefix exceeds the input")]
    LengthOverflow,
    /// A value outside the range of its type (a `char`, or a `usize` on a 32-bit host).
    #[error("value out of range")]
    OutOfRange,
    /// The bytes do not form a valid value of a zero-copy type.
    #[error("invalid bytes for a zero-copy value")]
    InvalidValue,
    /// Values nested deeper than [`crate::marshal::MAX_DEPTH`] (a recursive type).
    #[error("values nested too deeply")]
    TooDeep,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_without_final_period() {
        let errors = [
            CallError::TimedOut,
            CallError::OutcomeUnknown,
            CallError::NotExecuted,
            CallError::ShuttingDown,
            CallError::AuthMismatch,
            CallError::ServerBusy(BusyReason::WindowFull),
            CallError::InterfaceMismatch {
                interface: 1,
                method: 2,
            },
            CallError::UnknownInterface { interface: 1 },
            CallError::Remote(RemoteError {
                code: ErrorCode::HandlerPanicked,
            }),
            CallError::BadReply(DecodeError::Truncated),
            CallError::MessageTooLarge { len: 2, max: 1 },
            CallError::WindowFull,
            CallError::Disconnected,
            CallError::Io(std::io::ErrorKind::ConnectionRefused),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.chars().next().unwrap().is_lowercase(), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    #[test]
    fn error_codes_map_to_call_errors() {
        assert_eq!(
            CallError::from_code(ErrorCode::UnknownMethod, 7, 9),
            CallError::InterfaceMismatch {
                interface: 7,
                method: 9
            }
        );
        assert_eq!(
            CallError::from_code(ErrorCode::UnknownInterface, 7, 9),
            CallError::UnknownInterface { interface: 7 }
        );
        let bad = CallError::from_code(ErrorCode::BadRequest, 7, 9);
        assert!(!bad.may_have_executed());
        assert!(CallError::from_code(ErrorCode::HandlerPanicked, 7, 9).may_have_executed());
        assert!(CallError::TimedOut.may_have_executed());
        assert!(!CallError::ServerBusy(BusyReason::Overloaded).may_have_executed());
        assert_eq!(
            CallError::from_code(ErrorCode::ShuttingDown, 7, 9),
            CallError::ShuttingDown
        );
        assert_eq!(
            CallError::from_code(ErrorCode::Skipped, 7, 9),
            CallError::NotExecuted
        );
        assert_eq!(
            CallError::from_code(ErrorCode::Forgotten, 7, 9),
            CallError::OutcomeUnknown
        );
        assert!(!CallError::NotExecuted.may_have_executed());
        assert!(!CallError::ShuttingDown.may_have_executed());
    }
}
