//! Marshalling and unmarshalling of a call's arguments: rpc-core's shared descriptor against
//! serializing the same arguments into a `Vec<u8>` with postcard (serde), in one run.
//!
//! `cargo bench -p benches --bench marshal`
//!
//! - marshal: rpc-core builds the descriptor and the gather list a transport hands to
//!   `sendmsg`; postcard serializes into a new `Vec<u8>` (`to_allocvec`), or into a reused one
//!   (`to_extend`). Byte slices go through serde's `serialize_bytes`, its fastest path.
//! - unmarshal: rpc-core decodes a `&[u8]` borrowed from the receive buffer, as a generated
//!   dispatcher does; postcard decodes a borrowed `&[u8]`, or an owned `Vec<u8>` (what an
//!   RPC framework built on `DeserializeOwned` hands its handlers).
//! - stub: a whole call through a generated client over a transport that only builds the
//!   gather list and decodes a canned reply: the stub's own cost, without I/O.

use std::hint::black_box;
use std::io::IoSlice;

use arrayvec::ArrayVec;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rpc_core::marshal::{self, Encoder, MAX_SEGMENTS};
use rpc_core::service::{CallOptions, MethodDesc, Reply, Transport};
use rpc_core::{CallError, DecodeError, LamportStamp, rpc};
use serde::{Serialize, Serializer};

/// The argument sizes: a null call, 1 KiB, 64 KiB.
const SIZES: [(&str, Option<usize>); 3] = [
    ("null", None),
    ("1KiB", Some(1 << 10)),
    ("64KiB", Some(64 << 10)),
];

/// A byte slice serialized with serde's bytes path (as `serde_bytes` does), not as a
/// sequence of `u8`.
struct RawBytes<'a>(&'a [u8]);

impl Serialize for RawBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// The gather list a transport hands to `sendmsg`: built in place, as the transports do (an
/// `ArrayVec` returned by value would add a copy of its kilobyte to every call).
type GatherList<'e> = ArrayVec<IoSlice<'e>, MAX_SEGMENTS>;

fn gather<'e>(enc: &'e Encoder<'_>, iov: &mut GatherList<'e>) {
    enc.for_each_in(0..enc.len(), |s| iov.push(IoSlice::new(s)));
}

fn marshal(c: &mut Criterion) {
    let mut group = c.benchmark_group("marshal");
    for (name, size) in SIZES {
        let data = vec![0xa5u8; size.unwrap_or(0)];
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(BenchmarkId::new("rpc-core", name), |b| {
            b.iter(|| {
                let mut enc = Encoder::new();
                if size.is_some() {
                    enc.put(black_box(&data[..]));
                }
                let mut iov = GatherList::new();
                gather(&enc, &mut iov);
                black_box(&iov);
            })
        });
        group.bench_function(BenchmarkId::new("postcard", name), |b| {
            b.iter(|| {
                let bytes = match size {
                    Some(_) => postcard::to_allocvec(&(RawBytes(black_box(&data)),)),
                    None => postcard::to_allocvec(&()),
                };
                black_box(bytes.expect("serializes"))
            })
        });
        let mut buf = Vec::with_capacity(data.len() + 16);
        group.bench_function(BenchmarkId::new("postcard-reused-vec", name), |b| {
            b.iter(|| {
                buf.clear();
                let out = std::mem::take(&mut buf);
                buf = match size {
                    Some(_) => postcard::to_extend(&(RawBytes(black_box(&data)),), out),
                    None => postcard::to_extend(&(), out),
                }
                .expect("serializes");
                black_box(&buf);
            })
        });
    }
    group.finish();
}

fn unmarshal(c: &mut Criterion) {
    let mut group = c.benchmark_group("unmarshal");
    for (name, size) in SIZES {
        let data = vec![0xa5u8; size.unwrap_or(0)];
        let ours = match size {
            Some(_) => marshal::encode(&data[..]).to_vec(),
            None => Vec::new(),
        };
        let theirs = match size {
            Some(_) => postcard::to_allocvec(&(RawBytes(&data),)).expect("serializes"),
            None => postcard::to_allocvec(&()).expect("serializes"),
        };
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_function(BenchmarkId::new("rpc-core", name), |b| match size {
            Some(_) => b.iter(|| {
                marshal::decode::<&[u8]>(black_box(&ours))
                    .expect("decodes")
                    .len()
            }),
            None => b.iter(|| marshal::decode::<()>(black_box(&ours)).expect("decodes")),
        });
        group.bench_function(BenchmarkId::new("postcard", name), |b| match size {
            Some(_) => b.iter(|| {
                let (v,): (&[u8],) = postcard::from_bytes(black_box(&theirs)).expect("decodes");
                v.len()
            }),
            None => b.iter(|| postcard::from_bytes::<()>(black_box(&theirs)).expect("decodes")),
        });
        if size.is_some() {
            group.bench_function(BenchmarkId::new("postcard-owned", name), |b| {
                b.iter(|| {
                    let (v,): (Vec<u8>,) =
                        postcard::from_bytes(black_box(&theirs)).expect("decodes");
                    v
                })
            });
        }
    }
    group.finish();
}

// Only its client is measured.
#[allow(dead_code)]
#[rpc]
trait Bench {
    fn null(&self);
    fn put(&self, value: &[u8]) -> bool;
}

/// A transport without I/O: builds the gather list and decodes a canned reply.
struct Nowhere;

impl Transport for Nowhere {
    fn call<R>(
        &self,
        _: &'static MethodDesc,
        _: &CallOptions,
        request: &Encoder<'_>,
        decode: impl FnOnce(&[u8]) -> Result<R, DecodeError>,
    ) -> Result<Reply<R>, CallError> {
        let mut iov = GatherList::new();
        gather(request, &mut iov);
        black_box(&iov);
        let reply: &[u8] = if request.is_empty() { &[] } else { &[1] };
        let value = decode(black_box(reply)).map_err(CallError::BadReply)?;
        Ok(Reply {
            value,
            request_stamp: LamportStamp::default(),
            reply_stamp: LamportStamp::default(),
        })
    }
}

fn stub(c: &mut Criterion) {
    let mut group = c.benchmark_group("stub");
    let client = BenchClient::new(Nowhere);
    group.bench_function("null", |b| b.iter(|| client.null().expect("calls")));
    for (name, size) in &SIZES[1..] {
        let data = vec![0xa5u8; size.unwrap_or(0)];
        group.bench_function(*name, |b| {
            b.iter(|| client.put(black_box(&data)).expect("calls"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = marshal, unmarshal, stub
}
criterion_main!(benches);
