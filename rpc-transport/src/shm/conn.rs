//! One connection's shared segment, and how the two sides set it up over a Unix socket.
//!
//! The segment is a file under `/dev/shm`, `rpc-shm-<server pid>-<n>-<random>`, mode 0600,
//! mapped by both sides. Its first 64 words are a header:
//!
//! | word | what | written by |
//! |---|---|---|
//! | 0 | magic `b"rpc-shm\x01"` | server, once |
//! | 1..5 | ring length, slot bytes, segment words, server pid | server, once |
//! | 8 | heartbeat: bumped by the server's loop at least every 100 ms | server |
//! | 16 | the client has closed | client |
//! | 24 | the server has closed | server |
//!
//! then the request ring (client to server) and the reply ring (`ring.rs`). The server
//! creates the segment, sends its descriptor, the layout and its doorbell (an eventfd) over
//! the Unix socket; the client checks the layout against the segment's size and header, and
//! answers with its own doorbell. Each side then reads the layout only from its own copy.
//!
//! Liveness: each side holds an open-file-description lock on one byte of the segment (the
//! server byte 0, the client byte 1), which the kernel releases when the process dies; the
//! other side asks whether it is still held. A segment neither side holds any more is stale,
//! and is removed by the next server that starts in the same directory.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use super::region::Mapping;
use super::ring::Layout;

/// The segment format: `\x02` since descriptors carry a datagram's first bytes (a peer of
/// the earlier format refuses the segment rather than misread it).
const MAGIC: u64 = u64::from_le_bytes(*b"rpc-shm\x02");
/// Words of the header.
const HEADER: usize = 64;
pub(crate) const HEARTBEAT: usize = 8;
pub(crate) const CLIENT_CLOSED: usize = 16;
pub(crate) const SERVER_CLOSED: usize = 24;
/// The lock bytes.
pub(crate) const SERVER_BYTE: i64 = 0;
pub(crate) const CLIENT_BYTE: i64 = 1;
/// Bounds a client accepts from a server.
const MAX_RING: u64 = 1 << 16;
const MAX_SLOT: u64 = 1 << 22;
/// The prefix of segment names.
pub(crate) const PREFIX: &str = "rpc-shm-";

/// A connection's segment, mapped.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) file: File,
    pub(crate) map: Mapping,
    pub(crate) path: PathBuf,
    /// Client to server.
    pub(crate) requests: Layout,
    /// Server to client.
    pub(crate) replies: Layout,
}

/// The shape of a segment, as the server offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Shape {
    pub(crate) ring_len: u64,
    pub(crate) slot_bytes: u64,
    pub(crate) words: u64,
    pub(crate) server_pid: u64,
}

impl Shape {
    fn layouts(&self) -> Option<(Layout, Layout)> {
        if !self.ring_len.is_power_of_two()
            || self.ring_len > MAX_RING
            || self.slot_bytes == 0
            || self.slot_bytes > MAX_SLOT
        {
            return None;
        }
        let (len, slot) = (self.ring_len as usize, self.slot_bytes as usize);
        let requests = Layout::new(HEADER, len, slot);
        let replies = Layout::new(HEADER + requests.words().next_multiple_of(16), len, slot);
        let words = replies.base + replies.words();
        (words as u64 == self.words).then_some((requests, replies))
    }

    fn new(ring_len: usize, slot_bytes: usize) -> Self {
        let mut s = Self {
            ring_len: ring_len as u64,
            slot_bytes: slot_bytes.next_multiple_of(8) as u64,
            words: 0,
            server_pid: u64::from(std::process::id()),
        };
        let requests = Layout::new(HEADER, ring_len, slot_bytes);
        let replies = Layout::new(
            HEADER + requests.words().next_multiple_of(16),
            ring_len,
            slot_bytes,
        );
        s.words = (replies.base + replies.words()) as u64;
        s
    }

    fn to_bytes(self) -> [u8; 40] {
        let mut b = [0u8; 40];
        for (i, v) in [
            MAGIC,
            self.ring_len,
            self.slot_bytes,
            self.words,
            self.server_pid,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
        }
        b
    }

    fn from_bytes(b: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                b.get(i * 8..i * 8 + 8)?.try_into().ok()?,
            ))
        };
        (word(0)? == MAGIC).then_some(())?;
        Some(Self {
            ring_len: word(1)?,
            slot_bytes: word(2)?,
            words: word(3)?,
            server_pid: word(4)?,
        })
    }
}

fn lock_struct(kind: i32, byte: i64) -> libc::flock {
    libc::flock {
        l_type: kind as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: byte,
        l_len: 1,
        l_pid: 0,
    }
}

/// Takes the write lock on `byte` of `file` (held until the file is closed or the process
/// dies).
fn lock(file: &File, byte: i64) -> io::Result<()> {
    let l = lock_struct(libc::F_WRLCK, byte);
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&l))
        .map(drop)
        .map_err(io::Error::from)
}

/// Whether someone (another open file description) holds a lock on `byte` of `file`.
pub(crate) fn held(file: &File, byte: i64) -> bool {
    let mut l = lock_struct(libc::F_WRLCK, byte);
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut l)) {
        Ok(_) => i32::from(l.l_type) != libc::F_UNLCK,
        // Unknown: assume alive (the heartbeat still bounds a hung peer).
        Err(_) => true,
    }
}

impl Segment {
    /// Creates a segment in `dir` for one client (the server's side), locked as the server's.
    pub(crate) fn create(
        dir: &Path,
        ring_len: usize,
        slot_bytes: usize,
    ) -> io::Result<(Self, Shape)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shape = Shape::new(ring_len, slot_bytes);
        let (requests, replies) = shape
            .layouts()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "segment shape"))?;
        let path = dir.join(format!(
            "{PREFIX}{}-{}-{:08x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            getrandom::u32().map_err(io::Error::other)?
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        let made = (|| {
            file.set_len(shape.words * 8)?;
            lock(&file, SERVER_BYTE)?;
            let map = Mapping::new(&file)?;
            let w = map.words();
            for (i, v) in [
                MAGIC,
                shape.ring_len,
                shape.slot_bytes,
                shape.words,
                shape.server_pid,
            ]
            .into_iter()
            .enumerate()
            {
                w[i].store(v, Ordering::Relaxed);
            }
            Ok::<_, io::Error>(map)
        })();
        match made {
            Ok(map) => Ok((
                Self {
                    file,
                    map,
                    path,
                    requests,
                    replies,
                },
                shape,
            )),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Maps a segment a server offered (the client's side), checking the shape against the
    /// segment, and locks it as the client's.
    ///
    /// The segment is opened again by name, checked to be the very file whose descriptor the
    /// server passed: a lock belongs to an open file description, and the passed descriptor
    /// shares the server's, whose lock would then outlive the server.
    pub(crate) fn open(fd: OwnedFd, shape: Shape, path: PathBuf) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("shared segment: {what}"),
            )
        };
        let (requests, replies) = shape.layouts().ok_or_else(|| bad("impossible shape"))?;
        let passed = File::from(fd).metadata()?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != (passed.dev(), passed.ino()) {
            return Err(bad("the name is not the segment offered"));
        }
        let len = meta.len();
        if len != shape.words * 8 {
            return Err(bad("size differs from its shape"));
        }
        let map = Mapping::new(&file)?;
        let w = map.words();
        if !requests.fits(w.len()) || !replies.fits(w.len()) {
            return Err(bad("rings beyond the segment"));
        }
        if w[0].load(Ordering::Relaxed) != MAGIC {
            return Err(bad("no header"));
        }
        lock(&file, CLIENT_BYTE)?;
        Ok(Self {
            file,
            map,
            path,
            requests,
            replies,
        })
    }

    pub(crate) fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }

    /// Whether the peer holding `byte` is still alive.
    pub(crate) fn peer_alive(&self, byte: i64) -> bool {
        held(&self.file, byte)
    }

    /// Removes the segment's name (the mapping stays until both sides unmap it).
    pub(crate) fn unlink(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("ancillary buffer"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != bytes.len() {
        return Err(io::Error::other("short handshake message"));
    }
    Ok(())
}

fn recv_with_fds(stream: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            // At most two kept: any more a peer sends are closed as they drop.
            fds.extend(received.take(2usize.saturating_sub(fds.len())));
        }
    }
    Ok(got.bytes)
}

/// Server: offers a segment and its doorbell to a client.
pub(crate) fn offer(
    stream: &UnixStream,
    seg: &Segment,
    shape: Shape,
    doorbell: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut bytes = shape.to_bytes().to_vec();
    bytes.extend_from_slice(seg.path.as_os_str().as_encoded_bytes());
    send_with_fds(stream, &bytes, &[seg.file.as_fd(), doorbell])
}

/// Client: takes a server's offer: the segment, its shape and name, and the server's doorbell.
pub(crate) fn take_offer(stream: &UnixStream) -> io::Result<(Shape, PathBuf, OwnedFd, OwnedFd)> {
    let mut buf = [0u8; 40 + 4096];
    let mut fds = Vec::new();
    let n = recv_with_fds(stream, &mut buf, &mut fds)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not a shared-memory server's offer",
        )
    };
    let shape = Shape::from_bytes(&buf[..n.min(40)]).ok_or_else(bad)?;
    let path = PathBuf::from(String::from_utf8_lossy(&buf[40.min(n)..n]).into_owned());
    let mut fds = fds.into_iter();
    match (fds.next(), fds.next()) {
        (Some(seg), Some(bell)) => Ok((shape, path, seg, bell)),
        _ => Err(bad()),
    }
}

/// Client: accepts, sending its own doorbell.
pub(crate) fn accept(stream: &UnixStream, doorbell: BorrowedFd<'_>) -> io::Result<()> {
    send_with_fds(stream, &MAGIC.to_le_bytes(), &[doorbell])
}

/// Server: the client's doorbell, once it accepted.
pub(crate) fn accepted(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut buf = [0u8; 8];
    let mut fds = Vec::new();
    let n = recv_with_fds(stream, &mut buf, &mut fds)?;
    if n != 8 || u64::from_le_bytes(buf) != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a client's acceptance",
        ));
    }
    fds.into_iter()
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no doorbell"))
}

/// Removes the segments in `dir` that no live process holds (left by processes that died);
/// returns how many.
pub(crate) fn remove_stale(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let Ok(file) = OpenOptions::new().read(true).write(true).open(e.path()) else {
            continue;
        };
        if !held(&file, SERVER_BYTE)
            && !held(&file, CLIENT_BYTE)
            && std::fs::remove_file(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_survives_the_wire_and_impossible_ones_are_refused() {
        let s = Shape::new(64, 1000);
        assert_eq!(Shape::from_bytes(&s.to_bytes()), Some(s));
        assert!(s.layouts().is_some());
        for bad in [
            Shape { ring_len: 3, ..s },
            Shape {
                ring_len: 1 << 20,
                ..s
            },
            Shape { slot_bytes: 0, ..s },
            Shape {
                slot_bytes: u64::MAX,
                ..s
            },
            Shape {
                words: s.words + 1,
                ..s
            },
        ] {
            assert!(bad.layouts().is_none(), "{bad:?}");
        }
        assert_eq!(Shape::from_bytes(&[0; 40]), None);
        assert_eq!(Shape::from_bytes(&[1; 3]), None);
    }

    #[test]
    fn segments_are_locked_and_stale_ones_removed() {
        let dir = std::env::temp_dir().join(format!("rpc-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (seg, shape) = Segment::create(&dir, 8, 256).unwrap();
        // Another open file description sees the server's lock, not a client's.
        let other = File::open(&seg.path).unwrap();
        assert!(held(&other, SERVER_BYTE));
        assert!(!held(&other, CLIENT_BYTE));
        // The client side maps it and takes its byte.
        // The descriptor passed shares the server's open file description, as over a socket.
        let fd: OwnedFd = seg.file.try_clone().unwrap().into();
        let client = Segment::open(fd, shape, seg.path.clone()).unwrap();
        assert!(seg.peer_alive(CLIENT_BYTE));
        assert!(client.peer_alive(SERVER_BYTE));
        // Held: not stale.
        assert_eq!(remove_stale(&dir), 0);
        let path = seg.path.clone();
        drop(seg);
        assert!(
            !client.peer_alive(SERVER_BYTE),
            "the server's lock went with it"
        );
        drop(client);
        assert_eq!(remove_stale(&dir), 1);
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
