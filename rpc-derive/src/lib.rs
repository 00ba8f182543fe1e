//! Procedural macros of the RPC framework: the `#[rpc]` stub generator and
//! `#[derive(Marshal)]`. Use them through `rpc_core`, which re-exports them.
//!
//! Generated code names everything by absolute path (`::rpc_core::...`, `::core::...`), so it
//! compiles under `#![no_implicit_prelude]` and whatever the calling module imports or
//! shadows.
#![forbid(unsafe_code)]

use proc_macro::TokenStream;

mod errors;
mod fingerprint;
mod marshal;
mod rpc;
mod types;

/// Generates a client stub and a server dispatcher from a trait.
///
/// ```
/// use rpc_core::service::{CallContext, CallOptions};
/// use rpc_core::sim::{NetFaults, SimNet};
/// use rpc_core::{Marshal, rpc};
///
/// #[derive(Marshal, Debug, PartialEq)]
/// pub struct Stats {
///     pub keys: u64,
/// }
///
/// #[rpc]
/// pub trait Kv {
///     /// The value stored under `key`.
///     #[rpc(idempotent)]
///     fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
///     fn put(&self, key: &[u8], value: &[u8]) -> bool;
///     fn stats(&self) -> Stats;
///     /// Handlers may read the call's context; the client does not pass it.
///     fn whoami(&self, ctx: &CallContext) -> u64;
/// }
///
/// struct Store;
///
/// impl Kv for Store {
///     fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
///         (key == b"k").then(|| b"v".to_vec())
///     }
///     fn put(&self, _key: &[u8], _value: &[u8]) -> bool {
///         true
///     }
///     fn stats(&self) -> Stats {
///         Stats { keys: 1 }
///     }
///     fn whoami(&self, ctx: &CallContext) -> u64 {
///         ctx.client_id
///     }
/// }
///
/// # fn main() -> Result<(), rpc_core::CallError> {
/// let net = SimNet::new(1, NetFaults::none(), KvServer::new(Store));
/// let kv = KvClient::new(&net);
/// assert_eq!(kv.get(b"k")?, Some(b"v".to_vec()));
/// assert!(kv.put(b"k", b"w")?);
/// assert_eq!(kv.stats()?, Stats { keys: 1 });
///
/// // A deadline for one call, and the reply's Lamport stamps.
/// let reply = kv.with(CallOptions::new().timeout(std::time::Duration::from_millis(5))).get(b"k")?;
/// assert!(reply.reply_stamp > reply.request_stamp);
/// # Ok(())
/// # }
/// ```
///
/// # What it generates
///
/// The trait is kept as written (without the macro's `#[rpc(...)]` attributes on its
/// methods). Beside it, for a trait `Kv`:
///
/// - `KvClient<T>`, the client stub over a transport `T: rpc_core::service::Transport`:
///   `new(transport)`, `transport()`, `with(options)`, and for each method one with the same
///   arguments returning `Result<Ret, CallError>`. Arguments are not copied: the stub
///   describes them by reference in an `Encoder` (the shared descriptor) and the transport
///   gathers them from the caller's memory. A method's first parameter `&CallContext`, if
///   any, is the server's to fill in and is not part of the client's signature.
/// - `KvCall<'c, T>`, returned by `KvClient::with(CallOptions)`: the same methods, sent with
///   those options (a timeout), returning `Result<Reply<Ret>, CallError>`, whose `Reply`
///   carries the Lamport stamps of the request and of the reply.
/// - `KvServer<S>`, the dispatcher for an implementation `S: Kv + Send + Sync`:
///   `new(service)`, `get_ref()`, `into_inner()`, and `rpc_core::service::Service`. It decodes
///   arguments from the request buffer, borrowing `&[u8]`, `&str`, and `&T`/`&[T]` of
///   zero-copy types; a request that does not decode is refused with
///   `DispatchError::BadRequest` and the handler does not run.
///
/// # Method ids
///
/// Each method has a 32-bit id, a hash (FNV-1a, folded) of the interface name, the method
/// name, the schema fingerprints (`rpc_core::marshal::Schema::FINGERPRINT`) of its argument
/// types in order and of its return type (`()` if none), and its retry semantics. A
/// fingerprint covers the whole shape of a type, recursively: for a derived struct, its name
/// and its fields' names, order and types. So a client and a server built from different
/// versions of a method *or of any type it carries* (two fields of an argument's struct
/// swapped, a variant added to a returned enum) disagree on its id, and the call fails with
/// `CallError::InterfaceMismatch` instead of misreading bytes.
///
/// Types count by their wire form, not their spelling: `Vec<u8>`, `std::vec::Vec<u8>`,
/// `&[u8]`, `bytes::Bytes` and `PooledBytes` are the same bytes, `&str` and `String` the
/// same string, `&T`, `Box<T>` and `T` the same value, so a client may pass `&[u8]` to a
/// server that decodes `Vec<u8>` (`Schema` lists every equivalence). Lifetimes do not
/// travel and do not count.
///
/// Since fingerprints are known only to the compiler, ids are constants computed at compile
/// time (by `rpc_core::marshal::schema::method_id`), used in the method table and as the
/// dispatcher's match patterns: nothing is hashed when a call is made. Two methods of one
/// trait whose ids collide (about one chance in 2³² per pair) are a compile error naming both:
/// rename one of them. The interface id is a hash of the trait's name, or of
/// `#[rpc(name = "...")]`.
///
/// # Arguments
///
/// On the trait:
///
/// - `name = "kv.v2"`: the interface name on the wire (by default the trait's name).
/// - `crate = "path"`: where to find `rpc_core`, if it is renamed or re-exported.
///
/// On a method:
///
/// - `idempotent`: the method may run more than once for one call; the server keeps no reply
///   for it and a lost reply is recovered by running it again. By default a method runs at
///   most once per call: the server keeps its reply to answer retransmissions.
/// - `blocking`: the handler may block; transports run it on a worker pool rather than on the
///   thread that receives requests.
///
/// # Restrictions
///
/// Each is a compile error pointing at the offending token: methods must take `&self`, be
/// neither generic (lifetime parameters are allowed) nor `async`, `const` or `unsafe`; they
/// cannot be named `new`, `with` or `transport` (inherent methods of the client); argument
/// and return types cannot be or contain `impl Trait`, `dyn Trait`, `&mut`, raw or function
/// pointers or `Self`, and return types cannot borrow. Argument types must implement `Encode`
/// and decode borrowing from the request (`Decode<'de>`); return types must implement
/// `Encode` and `DecodeOwned`; both must implement `Schema` (which `#[derive(Marshal)]`
/// does).
#[proc_macro_attribute]
pub fn rpc(args: TokenStream, item: TokenStream) -> TokenStream {
    rpc::expand(args.into(), item.into()).into()
}

/// Implements `Encode`, `Decode` and `Schema` for a struct or an enum.
///
/// Fields are marshalled in order; an enum is its variant's index as a `u32`, then the
/// variant's fields. Type parameters must themselves be marshallable (`Encode`, `Decode`,
/// `Schema`). Lifetime parameters are for borrowed fields: `Decode<'de>` is implemented for
/// the type with every lifetime parameter set to `'de`, so that `&'a str` and `&'a [u8]`
/// fields borrow from the input. Decoding a type that contains itself (through `Box`, `Vec`
/// or `Option`) is bounded in depth.
///
/// ```
/// use rpc_core::Marshal;
///
/// #[derive(Marshal, Debug, PartialEq)]
/// struct Entry<'a> {
///     key: &'a str,
///     value: Option<Vec<u8>>,
/// }
///
/// #[derive(Marshal, Debug, PartialEq)]
/// enum Op<'a> {
///     Get(&'a str),
///     Put(Entry<'a>),
///     Clear,
/// }
///
/// let op = Op::Put(Entry { key: "k", value: Some(vec![1, 2]) });
/// let bytes = rpc_core::marshal::encode(&op).to_vec();
/// let back: Op<'_> = rpc_core::marshal::decode(&bytes).unwrap();
/// assert_eq!(back, op);
/// ```
///
/// # Zero-copy types
///
/// `#[marshal(zerocopy)]` on a type that derives zerocopy's `FromBytes`, `IntoBytes`,
/// `KnownLayout`, `Immutable` and `Unaligned` implements `ZeroCopy` instead: the value (and
/// slices of it) travel as their own bytes, by reference, and decode as `&T`/`&[T]` borrowed
/// from the receive buffer.
///
/// ```
/// use rpc_core::Marshal;
/// use zerocopy::little_endian::U64;
/// use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};
///
/// #[derive(Marshal, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
/// #[marshal(zerocopy)]
/// #[repr(C)]
/// struct Header {
///     offset: U64,
///     len: U64,
/// }
///
/// let header = Header { offset: 7.into(), len: 9.into() };
/// let bytes = rpc_core::marshal::encode(&header).to_vec();
/// let back: &Header = rpc_core::marshal::decode(&bytes).unwrap();
/// assert_eq!(back.len.get(), 9);
/// ```
///
/// # Schema fingerprint
///
/// `Schema::FINGERPRINT`, the constant `#[rpc]` folds into method ids, is a hash of the type's
/// shape: its name (not its module path), then for a struct whether its fields are named,
/// positional or absent and each field's name and type fingerprint in order, for an enum each
/// variant's name in order and its fields likewise, and the fingerprints of its type
/// arguments and the values of its const arguments. Renaming the type, a field or a variant,
/// reordering, adding or removing fields or variants, or changing a field's type changes it;
/// the same definition compiled twice (in another module, another build) gives the same. A
/// `#[marshal(zerocopy)]` struct has the fingerprint of the ordinary struct with the same
/// fields (its bytes are the same), counting zerocopy's little-endian `U32<LE>` as `u32`.
///
/// ```
/// use rpc_core::Marshal;
/// use rpc_core::marshal::Schema;
///
/// mod v1 {
///     #[derive(rpc_core::Marshal)]
///     pub struct Item { pub price: u32, pub stock: u32 }
/// }
/// mod v2 {
///     #[derive(rpc_core::Marshal)]
///     pub struct Item { pub stock: u32, pub price: u32 }
/// }
/// assert_ne!(v1::Item::FINGERPRINT, v2::Item::FINGERPRINT);
///
/// // A type may contain itself, by its own name or as `Self`.
/// #[derive(Marshal)]
/// enum List {
///     Nil,
///     Cons(u32, Box<List>),
/// }
/// # let _ = List::FINGERPRINT;
/// ```
///
/// Inside the type's own fields, its bare name (`List`, `Tree<T>`, whatever the arguments)
/// and `Self` stand for the type being defined and hash as a marker
/// (`rpc_core::marshal::schema::Recursive`); a longer path to it (`crate::List`) is not
/// recognised and makes the fingerprint depend on itself, a compile error ("cycle detected"):
/// spell it `List` or `Self`. Mutually recursive types (`A` holds a `B` that holds an `A`)
/// fail the same way, used in an `#[rpc]` method or not: give one of them a fingerprint by
/// name.
///
/// # Arguments
///
/// - `zerocopy`: see above.
/// - `crate = "path"`: names `rpc_core` if it is renamed or re-exported.
/// - `fingerprint = "name"`: the schema fingerprint is a hash of `name` (and of the generic
///   arguments, if any) instead of the type's shape; the fields are not examined. It breaks
///   a cycle of mutually recursive types. The name stands for the shape: change it whenever
///   the type changes on the wire (`"shop.Order/2"`); two types given the same name share a
///   fingerprint.
///
/// ```
/// use rpc_core::Marshal;
/// use rpc_core::marshal::{Schema, schema};
///
/// #[derive(Marshal)]
/// #[marshal(fingerprint = "example.Expr/1")]
/// enum Expr {
///     Lit(i64),
///     Block(Vec<Stmt>),
/// }
///
/// #[derive(Marshal)]
/// enum Stmt {
///     Eval(Expr),
///     Print(Expr),
/// }
///
/// assert_eq!(Expr::FINGERPRINT, schema::named("example.Expr/1"));
/// # let _ = Stmt::FINGERPRINT;
/// ```
#[proc_macro_derive(Marshal, attributes(marshal))]
pub fn derive_marshal(input: TokenStream) -> TokenStream {
    match syn::parse(input) {
        Ok(input) => marshal::expand(&input).into(),
        Err(e) => e.to_compile_error().into(),
    }
}
