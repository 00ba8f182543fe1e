//! Authentication: pre-shared keys, per-session keys, datagram tags and handshake cookies.
//!
//! Everything here is built from HMAC-SHA256 (RustCrypto's `hmac` and `sha2`, which use the
//! CPU's SHA extensions where it has them) and HKDF-SHA256 (`hkdf`); nothing is hand-written
//! cryptography. What this module adds is only which bytes go where:
//!
//! - **Tags.** A datagram flagged `AUTH` carries `HMAC-SHA256(key, header ‖ payload)`,
//!   truncated to its first [`TAG_LEN`] bytes, between the header and the payload. Under the
//!   handshake key the header covered is the whole 72 bytes as sent. Under a session's key it
//!   is the 52 bytes the key does not already bind: every byte but the client id, incarnation
//!   and session id (bytes 8..20 and 24..32), which went into the key's derivation and which
//!   every receiver checks against the session whose key it uses. A datagram with any of
//!   those changed is checked under another key or none, and fails; so nothing in a datagram
//!   can be changed without it being dropped. Leaving them out keeps a small datagram's inner
//!   hash to one SHA-256 block (52 header bytes, up to 3 payload bytes and the padding),
//!   which is a third of the cost of a tag. [`Sealer::tag`] takes the payload as a list of
//!   segments, so a sender tags the caller's memory where it lies, without copying it.
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
use subtle::ConstantTimeEq;

use crate::wire::{HEADER_LEN, TAG_LEN};

type HmacSha256 = Hmac<Sha256>;

/// Salt of every key derivation, naming the protocol and its version.
const SALT: &[u8] = b"spin-rpc/3";

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
        Sealer::new(&k, Cover::Whole)
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
            to_server: Sealer::new(&c2s, Cover::Unbound),
            to_client: Sealer::new(&s2c, Cover::Unbound),
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
pub struct Sealer(HmacSha256, Cover);

/// Which header bytes a key's tags cover.
#[derive(Clone, Copy)]
enum Cover {
    /// All 72 (the handshake key, which binds nothing of the header).
    Whole,
    /// All but the client id, incarnation and session id, which a session's key binds.
    Unbound,
}

/// Header bytes of the client id and incarnation, then of the session id: what a session's
/// key binds (`wire::Header`'s layout, checked by a test below).
const CLIENT_IDS: core::ops::Range<usize> = 8..20;
const SESSION_ID: core::ops::Range<usize> = 24..32;

/// How many header bytes a session's tag covers.
const UNBOUND_LEN: usize =
    HEADER_LEN - (CLIENT_IDS.end - CLIENT_IDS.start) - (SESSION_ID.end - SESSION_ID.start);

impl core::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    fn new(key: &[u8; 32], cover: Cover) -> Self {
        // HMAC takes keys of any length: this cannot fail.
        let mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
        Self(mac, cover)
    }

    /// The keyed state with the covered bytes of `header` absorbed. The bytes a session's tag
    /// covers are gathered into one run first: one update instead of three.
    fn start(&self, header: &[u8; HEADER_LEN]) -> HmacSha256 {
        let mut mac = self.0.clone();
        match self.1 {
            Cover::Whole => mac.update(header),
            Cover::Unbound => {
                let mut run = [0u8; UNBOUND_LEN];
                let (ids, rest) = run.split_at_mut(CLIENT_IDS.start);
                let (interface, tail) = rest.split_at_mut(SESSION_ID.start - CLIENT_IDS.end);
                ids.copy_from_slice(&header[..CLIENT_IDS.start]);
                interface.copy_from_slice(&header[CLIENT_IDS.end..SESSION_ID.start]);
                tail.copy_from_slice(&header[SESSION_ID.end..]);
                mac.update(&run);
            }
        }
        mac
    }

    /// The tag of a datagram: its header (as sent, `AUTH` flag included) and its payload,
    /// given as segments in order.
    pub fn tag<'a>(
        &self,
        header: &[u8; HEADER_LEN],
        payload: impl IntoIterator<Item = &'a [u8]>,
    ) -> [u8; TAG_LEN] {
        let mut mac = self.start(header);
        for seg in payload {
            mac.update(seg);
        }
        Tagger(mac).finish()
    }

    /// Starts a tag over `header`, for a payload whose segments come one at a time.
    pub fn begin(&self, header: &[u8; HEADER_LEN]) -> Tagger {
        Tagger(self.start(header))
    }

    /// Whether `tag` is the tag of `header` and `payload`. The caller has checked that a
    /// session-keyed datagram's ids are the session's. The two tags are compared in constant
    /// time as one 128-bit word (`subtle`), which costs a fraction of a byte-wise comparison.
    pub fn verify(&self, header: &[u8], payload: &[u8], tag: &[u8; TAG_LEN]) -> bool {
        let Ok(header) = <&[u8; HEADER_LEN]>::try_from(header) else {
            return false;
        };
        let mut mac = self.start(header);
        mac.update(payload);
        let ours = u128::from_le_bytes(Tagger(mac).finish());
        ours.ct_eq(&u128::from_le_bytes(*tag)).into()
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
    fn session_tags_cover_every_header_byte_their_key_does_not_bind() {
        use crate::wire::Header;
        use core::mem::offset_of;
        assert_eq!(offset_of!(Header, client_id), CLIENT_IDS.start);
        assert_eq!(offset_of!(Header, interface), CLIENT_IDS.end);
        assert_eq!(offset_of!(Header, session), SESSION_ID.start);
        assert_eq!(offset_of!(Header, seq), SESSION_ID.end);
        let psk = AuthKey::from_bytes([4; 32]);
        let session = psk.session(1, 2, 3, 4, &[5; 16]).to_server;
        let handshake = psk.handshake();
        for key in [&session, &handshake] {
            let t = key.tag(&header(0), [&b"x"[..]]);
            for i in 0..HEADER_LEN {
                let mut h = header(0);
                h[i] = 1;
                let bound = CLIENT_IDS.contains(&i) || SESSION_ID.contains(&i);
                let covered = !(bound && core::ptr::eq(key, &session));
                assert_eq!(key.verify(&h, b"x", &t), !covered, "byte {i}");
                assert_eq!(key.tag(&h, [&b"x"[..]]) == t, !covered, "byte {i}");
            }
        }
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
