//! Message bodies handed to drivers: borrowed from a datagram when a message fits in one,
//! owned when it was reassembled from fragments.

/// A message body.
#[derive(Debug, PartialEq, Eq)]
pub enum Body<'d> {
    /// The payload of the datagram that carried the whole message: no copy was made.
    Borrowed(&'d [u8]),
    /// Reassembled from fragments into a buffer of the state machine's pool; hand it back
    /// (`recycle`) to reuse the buffer.
    Owned(Vec<u8>),
}

impl Body<'_> {
    /// The buffer, if owned, so that it can be recycled.
    pub fn into_owned_buffer(self) -> Option<Vec<u8>> {
        match self {
            Body::Borrowed(_) => None,
            Body::Owned(v) => Some(v),
        }
    }
}

impl core::ops::Deref for Body<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Borrowed(b) => b,
            Body::Owned(v) => v,
        }
    }
}
