//! The call path allocates nothing in steady state: the client stub's descriptor, the
//! server's borrowed decoding, the reply descriptor and the reply's decoding.
//!
//! A counting global allocator, in a test binary of its own; counts are per thread, so the
//! test harness's other threads do not disturb them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::io::IoSlice;

use rpc_core::marshal::{Encoder, INLINE_SEGMENTS, MAX_SEGMENTS};
use rpc_core::service::{
    CallContext, CallOptions, MethodDesc, Reply, ReplySink, Service, Transport,
};
use rpc_core::{CallError, DecodeError, LamportStamp, Marshal, RemoteError, rpc};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn count() {
    // A const-initialised `Cell` has no destructor: this works at any point of a thread's life.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards its arguments unchanged to the system allocator, which upholds
// the `GlobalAlloc` contract; counting touches no memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `alloc`'s contract, which is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` and `layout` come from this allocator, that is from the system's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` and `layout` come from this allocator, that is from the system's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (u64, R) {
    let before = ALLOCATIONS.with(Cell::get);
    let r = f();
    (ALLOCATIONS.with(Cell::get) - before, r)
}

#[derive(Marshal, Clone, Copy, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[marshal(zerocopy)]
#[repr(C)]
struct Extent {
    offset: U64,
    len: U64,
    checksum: U64,
    owner: U64,
    flags: U32,
}

#[derive(Marshal, Clone, Copy, PartialEq, Debug)]
struct Summary {
    count: u64,
    first: Option<u8>,
}

#[rpc]
trait Hot {
    fn ping(&self);
    fn put(&self, key: &[u8], value: &[u8]) -> bool;
    fn describe(&self, id: u64, name: &str, extent: &Extent, words: &[U32]) -> Summary;
    fn lookup(&self, key: u64) -> Result<Option<u64>, u16>;
}

struct Handler;

impl Hot for Handler {
    fn ping(&self) {}
    fn put(&self, key: &[u8], value: &[u8]) -> bool {
        key.len() < value.len()
    }
    fn describe(&self, id: u64, name: &str, extent: &Extent, words: &[U32]) -> Summary {
        let count = id + name.len() as u64 + extent.len.get() + words.len() as u64;
        Summary {
            count,
            first: name.bytes().next(),
        }
    }
    fn lookup(&self, key: u64) -> Result<Option<u64>, u16> {
        match key {
            0 => Err(7),
            1 => Ok(None),
            k => Ok(Some(k * 2)),
        }
    }
}

/// An in-process transport: the request is gathered into a preallocated receive buffer, the
/// dispatcher runs on it, and the reply is gathered into another. The buffers are the
/// transport's, allocated once, as a real transport's receive buffers are.
struct Loopback<S> {
    server: S,
    request: RefCell<Vec<u8>>,
    reply: RefCell<Vec<u8>>,
}

struct Gather<'b>(&'b mut Vec<u8>);

impl ReplySink for Gather<'_> {
    fn send(&mut self, body: &Encoder<'_>) {
        self.0.clear();
        body.for_each_in(0..body.len(), |s| self.0.extend_from_slice(s));
    }
}

impl<S: Service> Transport for Loopback<S> {
    fn call<R>(
        &self,
        method: &'static MethodDesc,
        _: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        // What the kernel would be handed: one gather list, on the stack.
        let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
        let n = request.gather(0..request.len(), &mut slices);
        let mut buf = self.request.borrow_mut();
        buf.clear();
        for s in &slices[..n] {
            buf.extend_from_slice(s);
        }
        let ctx = CallContext {
            client_id: 1,
            client_incarnation: 1,
            seq: 1,
            session: 1,
            request_stamp: LamportStamp::new(1, 1),
            received_stamp: LamportStamp::new(2, 0),
            interface: method.interface,
            method: method.id,
            idempotent: method.idempotent,
        };
        let mut reply = self.reply.borrow_mut();
        self.server
            .call(&ctx, &buf, &mut Gather(&mut reply))
            .map_err(|e| CallError::Remote(RemoteError { code: e.code() }))?;
        let value = decode(&reply).map_err(CallError::BadReply)?;
        Ok(Reply {
            value,
            request_stamp: ctx.request_stamp,
            reply_stamp: ctx.received_stamp,
        })
    }
}

#[test]
fn a_call_allocates_nothing_in_steady_state() {
    let value = vec![0x11u8; 1 << 20];
    let key = b"a key of a few dozen bytes, for a borrowed segment";
    let words: Vec<U32> = (0..256).map(U32::new).collect();
    let extent = Extent::read_from_bytes(&[3; 36]).unwrap();
    let net = Loopback {
        server: HotServer::new(Handler),
        request: RefCell::new(Vec::with_capacity(2 << 20)),
        reply: RefCell::new(Vec::with_capacity(4096)),
    };
    let client = HotClient::new(&net);
    let calls = |client: &HotClient<&Loopback<HotServer<Handler>>>| {
        client.ping().unwrap();
        assert!(client.put(key, &value).unwrap());
        let summary = client.describe(5, "name", &extent, &words).unwrap();
        assert_eq!(
            summary,
            Summary {
                count: 5 + 4 + 0x0303_0303_0303_0303 + 256,
                first: Some(b'n')
            }
        );
        assert_eq!(client.lookup(0).unwrap(), Err(7));
        assert_eq!(client.lookup(1).unwrap(), Ok(None));
        assert_eq!(client.lookup(21).unwrap(), Ok(Some(42)));
        let reply = client.with(CallOptions::new()).put(b"", b"x").unwrap();
        assert!(reply.value);
    };
    calls(&client); // Warm up (thread-locals of the test harness, lazily initialised statics).
    let (n, ()) = allocations(|| {
        for _ in 0..100 {
            calls(&client);
        }
    });
    assert_eq!(n, 0, "allocations in 700 calls");
}

#[test]
fn the_counter_counts() {
    // The measurement itself is sound: an allocation in the closure is seen.
    let (n, v) = allocations(|| vec![1u8; 10]);
    assert_eq!(n, 1);
    assert_eq!(v.len(), 10);
}

/// Encoding alone, with the descriptor handed to a "kernel" as a gather list: nothing
/// allocates either, for a message using every segment held in place.
#[test]
fn a_full_descriptor_allocates_nothing() {
    let chunks: Vec<Vec<u8>> = (0..INLINE_SEGMENTS / 2)
        .map(|i| vec![i as u8; 64])
        .collect();
    let (n, total) = allocations(|| {
        let mut total = 0;
        for _ in 0..100 {
            let mut enc = Encoder::new();
            for c in &chunks {
                enc.put(&c[..]);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SEGMENTS];
            let k = enc.gather(0..enc.len(), &mut slices);
            total += slices[..k].iter().map(|s| s.len()).sum::<usize>();
            assert!(!enc.spilled());
        }
        total
    });
    assert_eq!(n, 0);
    assert_eq!(total, 100 * chunks.len() * (4 + 64));
}
