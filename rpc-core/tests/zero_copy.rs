//! Zero-copy, proven by addresses: the client's descriptor points at the caller's own memory,
//! the server's arguments point into the receive buffer, and the reply descriptor points at
//! the return value's memory.

use std::cell::RefCell;
use std::io::IoSlice;
use std::ops::Range;
use std::sync::Mutex;

use bytes::Bytes;
use rpc_core::marshal::{Encoder, MAX_SEGMENTS};
use rpc_core::service::{
    CallContext, CallOptions, MethodDesc, Reply, ReplySink, Service, Transport,
};
use rpc_core::{CallError, DecodeError, LamportStamp, Marshal, rpc};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

#[derive(
    Marshal, Clone, Copy, Debug, PartialEq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[marshal(zerocopy)]
#[repr(C)]
struct Extent {
    offset: U64,
    len: U64,
    generation: U64,
    checksum: U64,
    flags: U32,
    owner: U32,
}

#[rpc]
trait Store {
    fn write(&self, key: &str, data: &[u8]) -> u64;
    fn write_owned(&self, key: String, data: Vec<u8>, blob: Bytes) -> u64;
    fn extents(&self, first: &Extent, rest: &[Extent], words: &[U32]) -> u64;
    fn read(&self, len: u32) -> Vec<u8>;
}

/// Where the handler found its arguments, and where its reply lives.
#[derive(Default)]
struct Spy {
    seen: Mutex<Vec<Range<usize>>>,
}

fn span<T>(s: &[T]) -> Range<usize> {
    let r = s.as_ptr_range();
    r.start as usize..r.end as usize
}

impl Spy {
    fn saw<T>(&self, s: &[T]) {
        self.seen.lock().unwrap().push(span(s));
    }
}

impl Store for Spy {
    fn write(&self, key: &str, data: &[u8]) -> u64 {
        self.saw(key.as_bytes());
        self.saw(data);
        data.len() as u64
    }
    fn write_owned(&self, _: String, data: Vec<u8>, _: Bytes) -> u64 {
        data.len() as u64
    }
    fn extents(&self, first: &Extent, rest: &[Extent], words: &[U32]) -> u64 {
        self.saw(std::slice::from_ref(first));
        self.saw(rest);
        self.saw(words);
        rest.len() as u64
    }
    fn read(&self, len: u32) -> Vec<u8> {
        let v = vec![0xab; len as usize];
        self.saw(&v);
        v
    }
}

/// A transport that keeps the request's segments (as addresses) and answers with a canned
/// reply.
#[derive(Default)]
struct Recorder {
    segments: RefCell<Vec<Range<usize>>>,
    gathered: RefCell<Vec<Range<usize>>>,
    spilled: RefCell<bool>,
    reply: Vec<u8>,
}

impl Transport for Recorder {
    fn call<R>(
        &self,
        _: &'static MethodDesc,
        _: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        *self.segments.borrow_mut() = request.segments().map(span).collect();
        *self.spilled.borrow_mut() = request.spilled();
        let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
        let n = request.gather(0..request.len(), &mut slices);
        *self.gathered.borrow_mut() = slices[..n].iter().map(|s| span(s)).collect();
        let value = decode(&self.reply).map_err(CallError::BadReply)?;
        Ok(Reply {
            value,
            request_stamp: LamportStamp::default(),
            reply_stamp: LamportStamp::default(),
        })
    }
}

fn has(ranges: &[Range<usize>], want: Range<usize>) -> bool {
    ranges.contains(&want)
}

#[test]
fn a_one_mebibyte_argument_is_described_by_reference() {
    let data = vec![0x5a_u8; 1 << 20];
    let key = "a key long enough to travel by reference, not inline";
    let t = Recorder {
        reply: (1u64 << 20).to_le_bytes().to_vec(),
        ..Default::default()
    };
    let client = StoreClient::new(&t);
    assert_eq!(client.write(key, &data).unwrap(), 1 << 20);
    let segments = t.segments.borrow();
    assert!(
        has(&segments, span(&data)),
        "the descriptor points at the caller's 1 MiB: {segments:?}"
    );
    assert!(has(&segments, span(key.as_bytes())), "and at the key");
    // What goes to the kernel is the same memory.
    let gathered = t.gathered.borrow();
    assert!(has(&gathered, span(&data)));
    assert_eq!(
        gathered.iter().map(|r| r.len()).sum::<usize>(),
        4 + key.len() + 4 + (1 << 20)
    );
}

#[test]
fn owned_buffers_and_zero_copy_values_are_described_by_reference() {
    let t = Recorder {
        reply: 0u64.to_le_bytes().to_vec(),
        ..Default::default()
    };
    let client = StoreClient::new(&t);

    let key = "k".repeat(100);
    let data = vec![1u8; 4096];
    let blob = Bytes::from(vec![2u8; 4096]);
    client
        .write_owned(key.clone(), data.clone(), blob.clone())
        .unwrap();
    // Arguments by value are moved into the stub; their heap buffers stay where they are.
    // Nothing spilled and the inline area is smaller than 4 KiB: both are borrowed segments.
    assert!(!*t.spilled.borrow());
    let segments = t.segments.borrow().clone();
    assert_eq!(segments.iter().filter(|r| r.len() == 4096).count(), 2);

    let extent = Extent {
        offset: U64::new(1),
        len: U64::new(2),
        generation: U64::new(3),
        checksum: U64::new(4),
        flags: U32::new(5),
        owner: U32::new(6),
    };
    let rest = vec![extent; 10];
    let words: Vec<U32> = (0..100).map(U32::new).collect();
    client.extents(&extent, &rest, &words).unwrap();
    let segments = t.segments.borrow();
    assert!(
        has(&segments, span(std::slice::from_ref(&extent))),
        "a zero-copy struct"
    );
    assert!(has(&segments, span(&rest)), "a slice of zero-copy structs");
    assert!(
        has(&segments, span(&words)),
        "a slice of byte-order integers"
    );
}

/// Receives a reply descriptor, keeping its segments' addresses and bytes.
#[derive(Default)]
struct Sink {
    segments: Vec<Range<usize>>,
    bytes: Vec<u8>,
}

impl ReplySink for Sink {
    fn send(&mut self, body: &Encoder<'_>) {
        self.segments = body.segments().map(span).collect();
        self.bytes = body.to_vec();
    }
}

fn context(server: &dyn Service, name: &str) -> CallContext {
    let m = server.methods().iter().find(|m| m.name == name).unwrap();
    CallContext {
        client_id: 1,
        client_incarnation: 1,
        seq: 1,
        session: 1,
        request_stamp: LamportStamp::new(1, 1),
        received_stamp: LamportStamp::new(2, 0),
        interface: m.interface,
        method: m.id,
        idempotent: m.idempotent,
    }
}

/// A transport that keeps the request's bytes, as the server would receive them, and fails
/// the call.
#[derive(Default)]
struct Capture {
    bytes: RefCell<Vec<u8>>,
}

impl Transport for Capture {
    fn call<R>(
        &self,
        _: &'static MethodDesc,
        _: &CallOptions,
        request: &Encoder<'_>,
        _: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        *self.bytes.borrow_mut() = request.to_vec();
        Err(CallError::Disconnected)
    }
}

#[test]
fn the_server_decodes_arguments_inside_the_receive_buffer() {
    let capture = Capture::default();
    let client = StoreClient::new(&capture);
    let data = vec![9u8; 100_000];
    let key = "a key, this time decoded by the server";
    let _ = client.write(key, &data);
    let buffer = capture.bytes.take();

    let server = StoreServer::new(Spy::default());
    let mut sink = Sink::default();
    server
        .call(&context(&server, "write"), &buffer, &mut sink)
        .unwrap();
    assert_eq!(sink.bytes, 100_000u64.to_le_bytes());
    let inside = span(&buffer);
    let seen = server.get_ref().seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for r in &seen {
        assert!(
            inside.start <= r.start && r.end <= inside.end,
            "{r:?} is inside {inside:?}"
        );
    }
    assert_eq!(seen[0].len(), key.len());
    assert_eq!(seen[1].len(), data.len());

    let extent = Extent::read_from_bytes(&[7; 40]).unwrap();
    let rest = vec![extent; 3];
    let words: Vec<U32> = (0..9).map(U32::new).collect();
    let _ = client.extents(&extent, &rest, &words);
    let buffer = capture.bytes.take();
    server.get_ref().seen.lock().unwrap().clear();
    server
        .call(&context(&server, "extents"), &buffer, &mut sink)
        .unwrap();
    let inside = span(&buffer);
    let seen = server.get_ref().seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|r| r.len()).collect::<Vec<_>>(),
        [40, 120, 36]
    );
    for r in &seen {
        assert!(
            inside.start <= r.start && r.end <= inside.end,
            "{r:?} is inside {inside:?}"
        );
    }
}

#[test]
fn the_reply_descriptor_points_at_the_return_value() {
    let server = StoreServer::new(Spy::default());
    let mut sink = Sink::default();
    let request = 5000u32.to_le_bytes();
    server
        .call(&context(&server, "read"), &request, &mut sink)
        .unwrap();
    let returned = server.get_ref().seen.lock().unwrap()[0].clone();
    assert!(
        has(&sink.segments, returned),
        "the reply is sent from the returned vector itself"
    );
    assert_eq!(sink.bytes.len(), 4 + 5000);
}
