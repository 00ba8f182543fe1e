//! Authentication: pre-shared keys, per-session keys, datagram tags and handshake cookies.
//!
//! Everything here is built from HMAC-SHA256 (RustCrypto's `hmac` and `sha2`, which use the
//! CPU's SHA extensions where it has them) and HKDF-SHA256 (`hkdf`); nothing is hand-written
//! cryptography. What this module adds is only which bytes go where:
//!
//! - **Tags.** A datagram flagged `AUTH` carries `HMAC-SHA256(key, header ‖ payload)`,
//!   truncated to its first [`TAG_LEN`] bytes, between the header and the payload. The header
//!   covered is the whole 72 bytes as sent (flags, sequence number, acknowledgement, Lamport
//!   stamp and lengths included), so nothing in a datagram can be changed without the tag
//!   failing. [`Sealer::tag`] takes the payload as a list of segments, so a sender tags the
//!   caller's memory where it lies, without copying it.
//! - **Keys.** Both sides hold a 32-byte pre-shared [`AuthKey`]. From it HKDF derives a
//!   handshake key (tags of `Hello`, `Retry`, `Refused` and `Stale`) and, for each session,
//!   one key per direction from the session's ids and the server's random nonce, so a
//!   datagram of one session or direction is refused in any other, and a replay of a
//!   datagram is at most a retransmission the at-most-once rules already absorb.
//! - **Cookies.** A server answers a `Hello` without a valid cookie with a `Retry` carrying
//!   `HMAC(secret, address ‖ client ids ‖ nonce ‖ issue time)`: checking the cookie of the
//!   next `Hello` needs no state, so a `Hello` from a forged address costs the server nothing
//!   but one MAC.

use core::hash::{Hash, Hasher};

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{HEADER_LEN, TAG_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Salt of every key derivation, naming the protocol and its version.
const SALT: &[u8] = b"spin-rpc/2";

/// A 32-byte pre-shared key, configured on both sides to turn on authenticated mode.
///
/// Its `Debug` output does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthKey([u8; 32]);

impl AuthKey {
    /// A key from its bytes (32 random bytes, shared out of band).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A key derived from a passphrase of any length with HKDF. A random 32-byte key
    /// ([`AuthKey::from_bytes`]) is stronger than any passphrase.
    pub fn from_passphrase(passphrase: &[u8]) -> Self {
        let mut out = [0u8; 32];
        expand(passphrase, b"passphrase", &[], &mut out);
        Self(out)
    }

    /// The key of handshake datagrams (`Hello`, `Retry`, `Refused`, `Stale`).
    pub fn handshake(&self) -> Sealer {
        let mut k = [0u8; 32];
        expand(&self.0, b"handshake", &[], &mut k);
        Sealer::new(&k)
    }

    /// The keys of one session: client to server, then server to client. `session` is the
    /// id the server assigned, `nonce` the client's handshake nonce and `server_nonce` the
    /// server's random nonce from the `Welcome`.
    pub fn session(
        &self,
        client_id: u64,
        incarnation: u32,
        nonce: u64,
        session: u64,
        server_nonce: &[u8; 16],
    ) -> SessionKeys {
        let mut context = [0u8; 44];
        context[..8].copy_from_slice(&client_id.to_le_bytes());
        context[8..12].copy_from_slice(&incarnation.to_le_bytes());
        context[12..20].copy_from_slice(&nonce.to_le_bytes());
        context[20..28].copy_from_slice(&session.to_le_bytes());
        context[28..].copy_from_slice(server_nonce);
        let (mut c2s, mut s2c) = ([0u8; 32], [0u8; 32]);
        expand(&self.0, b"client to server", &context, &mut c2s);
        expand(&self.0, b"server to client", &context, &mut s2c);
        SessionKeys {
            to_server: Sealer::new(&c2s),
            to_client: Sealer::new(&s2c),
        }
    }
}

impl core::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("AuthKey(..)")
    }
}

/// HKDF-SHA256 with the protocol's salt: `out = Expand(Extract(SALT, ikm), label ‖ context)`.
fn expand(ikm: &[u8], label: &[u8], context: &[u8], out: &mut [u8; 32]) {
    let hk = Hkdf::<Sha256>::new(Some(SALT), ikm);
    // 32 bytes is far below HKDF-SHA256's limit of 8160: this cannot fail.
    let _ = hk.expand_multi_info(&[label, b"\0", context], out);
}

/// The two keys of a session.
#[derive(Clone, Debug)]
pub struct SessionKeys {
    /// Tags requests.
    pub to_server: Sealer,
    /// Tags replies and the server's answers within the session.
    pub to_client: Sealer,
}

/// One direction's key, ready to tag and check datagrams (the HMAC's keyed state is
/// computed once, so a tag costs only the compression of the message itself).
#[derive(Clone)]
pub struct Sealer(HmacSha256);

impl core::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    fn new(key: &[u8; 32]) -> Self {
        // HMAC takes keys of any length: this cannot fail.
        Self(<HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length"))
    }

    /// The tag of a datagram: its header (as sent, `AUTH` flag included) and its payload,
    /// given as segments in order.
    pub fn tag<'a>(
        &self,
        header: &[u8; HEADER_LEN],
        payload: impl IntoIterator<Item = &'a [u8]>,
    ) -> [u8; TAG_LEN] {
        let mut mac = self.0.clone();
        mac.update(header);
        for seg in payload {
            mac.update(seg);
        }
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Starts a tag over `header`, for a payload whose segments come one at a time.
    pub fn begin(&self, header: &[u8; HEADER_LEN]) -> Tagger {
        let mut mac = self.0.clone();
        mac.update(header);
        Tagger(mac)
    }

    /// Whether `tag` is the tag of `header` and `payload` (compared in constant time).
    pub fn verify(&self, header: &[u8], payload: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let mut mac = self.0.clone();
        mac.update(header);
        mac.update(payload);
        mac.verify_truncated_left(tag).is_ok()
    }
}

/// A tag being computed: [`Sealer::begin`], then [`Tagger::update`] with each payload segment in
/// order, then [`Tagger::finish`].
#[derive(Clone)]
pub struct Tagger(HmacSha256);

impl core::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Tagger(..)")
    }
}

impl Tagger {
    /// Adds the next payload bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The tag.
    pub fn finish(self) -> [u8; TAG_LEN] {
        let full = self.0.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }
}

/// The server's cookie secret.
#[derive(Clone)]
pub(crate) struct CookieKey(HmacSha256);

impl core::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// Feeds what an address's `Hash` writes into a MAC: the address's own bytes, in a fixed
/// order, for a secret only this process knows.
struct MacWriter<'a>(&'a mut HmacSha256);

impl Hasher for MacWriter<'_> {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

impl CookieKey {
    pub(crate) fn new(secret: &[u8; 32]) -> Self {
        Self(<HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts any key length"))
    }

    pub(crate) fn mac<A: Hash>(
        &self,
        addr: &A,
        client_id: u64,
        incarnation: u32,
        nonce: u64,
        issued: u64,
    ) -> [u8; 16] {
        let mut mac = self.0.clone();
        addr.hash(&mut MacWriter(&mut mac));
        mac.update(&client_id.to_le_bytes());
        mac.update(&incarnation.to_le_bytes());
        mac.update(&nonce.to_le_bytes());
        mac.update(&issued.to_le_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    pub(crate) fn check<A: Hash>(
        &self,
        addr: &A,
        client_id: u64,
        incarnation: u32,
        nonce: u64,
        issued: u64,
        given: &[u8; 16],
    ) -> bool {
        let mut mac = self.0.clone();
        addr.hash(&mut MacWriter(&mut mac));
        mac.update(&client_id.to_le_bytes());
        mac.update(&incarnation.to_le_bytes());
        mac.update(&nonce.to_le_bytes());
        mac.update(&issued.to_le_bytes());
        mac.verify_truncated_left(given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(byte: u8) -> [u8; HEADER_LEN] {
        [byte; HEADER_LEN]
    }

    #[test]
    fn tags_cover_header_and_every_payload_byte() {
        let k = AuthKey::from_bytes([1; 32]).handshake();
        let t = k.tag(&header(7), [&b"abc"[..], b"def"]);
        // Segmentation does not matter, content does.
        assert_eq!(t, k.tag(&header(7), [&b"abcdef"[..]]));
        let mut streamed = k.begin(&header(7));
        streamed.update(b"ab");
        streamed.update(b"cdef");
        assert_eq!(streamed.finish(), t);
        assert!(k.verify(&header(7), b"abcdef", &t));
        assert!(!k.verify(&header(8), b"abcdef", &t));
        assert!(!k.verify(&header(7), b"abcdeg", &t));
        let mut bad = t;
        bad[15] ^= 1;
        assert!(!k.verify(&header(7), b"abcdef", &bad));
    }

    #[test]
    fn keys_differ_by_direction_session_and_psk() {
        let psk = AuthKey::from_bytes([2; 32]);
        let a = psk.session(1, 2, 3, 4, &[5; 16]);
        let h = header(0);
        let t = a.to_server.tag(&h, []);
        assert!(a.to_server.verify(&h, &[], &t));
        assert!(!a.to_client.verify(&h, &[], &t));
        let other_session = psk.session(1, 2, 3, 5, &[5; 16]);
        assert!(!other_session.to_server.verify(&h, &[], &t));
        let other_nonce = psk.session(1, 2, 3, 4, &[6; 16]);
        assert!(!other_nonce.to_server.verify(&h, &[], &t));
        let other_psk = AuthKey::from_bytes([3; 32]).session(1, 2, 3, 4, &[5; 16]);
        assert!(!other_psk.to_server.verify(&h, &[], &t));
        assert!(!psk.handshake().verify(&h, &[], &t));
        // The same inputs give the same keys on both sides.
        let again = psk.session(1, 2, 3, 4, &[5; 16]);
        assert!(again.to_server.verify(&h, &[], &t));
    }

    #[test]
    fn cookies_bind_address_ids_nonce_and_time() {
        let k = CookieKey::new(&[9; 32]);
        let c = k.mac(&10u32, 1, 2, 3, 4);
        assert!(k.check(&10u32, 1, 2, 3, 4, &c));
        assert!(!k.check(&11u32, 1, 2, 3, 4, &c));
        assert!(!k.check(&10u32, 9, 2, 3, 4, &c));
        assert!(!k.check(&10u32, 1, 9, 3, 4, &c));
        assert!(!k.check(&10u32, 1, 2, 9, 4, &c));
        assert!(!k.check(&10u32, 1, 2, 3, 9, &c));
        assert!(!CookieKey::new(&[8; 32]).check(&10u32, 1, 2, 3, 4, &c));
    }

    #[test]
    fn debug_hides_keys() {
        let k = AuthKey::from_bytes([0xab; 32]);
        assert_eq!(format!("{k:?}"), "AuthKey(..)");
        assert_eq!(format!("{:?}", k.handshake()), "Sealer(..)");
        assert_ne!(
            AuthKey::from_passphrase(b"a"),
            AuthKey::from_passphrase(b"b")
        );
    }
}
