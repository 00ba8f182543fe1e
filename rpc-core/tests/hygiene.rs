//! Generated code names everything by absolute path: it compiles without the prelude, and
//! with the caller's own items shadowing the names it uses.

#![no_implicit_prelude]

// Items named like what the generated code uses, to catch unqualified paths.
#[allow(dead_code)]
mod shadows {
    pub(crate) struct Result;
    pub(crate) struct Ok;
    pub(crate) struct Err;
    pub(crate) struct Option;
    pub(crate) struct Some;
    pub(crate) struct None;
    pub(crate) struct Vec;
    pub(crate) struct Encoder;
    pub(crate) struct Decoder;
    pub(crate) trait Encode {}
    pub(crate) trait Decode {}
    pub(crate) trait Schema {}
    pub(crate) struct Recursive;
    pub(crate) struct Fingerprinter;
    pub(crate) struct __RpcMethodIds;
    pub(crate) trait Transport {}
    pub(crate) trait Service {}
    pub(crate) trait Clone {}
    pub(crate) trait Send {}
    pub(crate) trait Sync {}
    pub(crate) struct CallError;
    pub(crate) struct Reply;
}

mod service {
    #[allow(unused_imports)]
    use super::shadows::*;
    use ::rpc_core::service::CallContext;
    use ::std::option::Option;
    use ::std::result::Result;
    use ::std::string::String;
    use ::std::vec::Vec;

    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    pub(crate) struct Point<'a, T> {
        pub(crate) name: &'a str,
        pub(crate) coords: Vec<T>,
    }

    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    pub(crate) enum Shape<T> {
        Empty,
        Circle(T, T),
        Named { id: u32, label: String },
    }

    #[derive(::rpc_core::Marshal)]
    pub(crate) struct Unit;

    /// Recursive, through its own name and `Self`.
    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    pub(crate) enum Nested {
        Leaf(u8),
        Node(::std::boxed::Box<Nested>, Vec<Self>),
    }

    /// A fingerprint by name.
    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    #[marshal(fingerprint = "hygiene.Named")]
    pub(crate) struct Named<const N: usize>(pub(crate) [u8; N]);

    /// Parameters are named like the dispatcher's locals.
    #[::rpc_core::rpc]
    pub(crate) trait Hygienic {
        fn echo(&self, enc: &[u8], dec: &str, ret: u32) -> (Vec<u8>, String, u32);
        #[rpc(idempotent, blocking)]
        fn shapes(
            &self,
            ctx: &CallContext,
            request: Shape<i32>,
            sink: Option<u8>,
        ) -> Result<Shape<i64>, String>;
        fn point(&self, reply: Point<'_, u16>, body: Unit) -> u64;
        fn unit(&self);
        fn nested(&self, nested: Nested, named: Named<2>) -> Nested;
        /// An async handler, with arguments named like the generated code's locals.
        async fn later(&self, ctx: &CallContext, request: &[u8], call: u32, enc: u8) -> u64;
    }

    /// Types named like the generated code's generic parameters.
    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    pub(crate) struct T(pub(crate) u8);
    #[derive(::rpc_core::Marshal, ::std::fmt::Debug, ::std::cmp::PartialEq)]
    pub(crate) struct S(pub(crate) u8);

    #[::rpc_core::rpc]
    pub(crate) trait Names {
        #[allow(clippy::needless_lifetimes)]
        fn names<'c>(&self, t: T, s: &'c str) -> S;
    }

    impl Names for Impl {
        #[allow(clippy::needless_lifetimes)]
        fn names<'c>(&self, t: T, s: &'c str) -> S {
            S(t.0 + s.len() as u8)
        }
    }

    pub(crate) struct Impl;

    impl Hygienic for Impl {
        fn echo(&self, enc: &[u8], dec: &str, ret: u32) -> (Vec<u8>, String, u32) {
            (
                <[u8]>::to_vec(enc),
                <str as ::std::borrow::ToOwned>::to_owned(dec),
                ret,
            )
        }
        fn shapes(
            &self,
            ctx: &CallContext,
            request: Shape<i32>,
            sink: Option<u8>,
        ) -> Result<Shape<i64>, String> {
            match (request, sink) {
                (Shape::Circle(x, y), Option::Some(_)) => {
                    Result::Ok(Shape::Circle(x as i64, y as i64 + (ctx.seq > 0) as i64))
                }
                (other, _) => Result::Err(::std::format!("{other:?}")),
            }
        }
        fn point(&self, reply: Point<'_, u16>, _body: Unit) -> u64 {
            reply.name.len() as u64 + reply.coords.len() as u64
        }
        fn unit(&self) {}
        async fn later(&self, ctx: &CallContext, request: &[u8], call: u32, enc: u8) -> u64 {
            ::std::cmp::Ord::min(ctx.seq, 1) + request.len() as u64 + call as u64 + enc as u64
        }
        fn nested(&self, nested: Nested, named: Named<2>) -> Nested {
            Nested::Node(
                ::std::boxed::Box::new(nested),
                ::std::vec![Nested::Leaf(named.0[0]), Nested::Leaf(named.0[1])],
            )
        }
    }
}

#[test]
fn generated_code_is_hygienic() {
    use ::rpc_core::sim::{NetFaults, SimNet};
    use ::std::assert_eq;
    use ::std::option::Option::Some;
    use ::std::result::Result::{Err, Ok};
    use ::std::string::ToString;
    use ::std::vec;

    use service::{HygienicClient, HygienicServer, Impl, Named, Nested, Point, Shape, Unit};

    let net = SimNet::new(1, NetFaults::none(), HygienicServer::new(Impl));
    let client = HygienicClient::new(&net);
    let echoed = client.echo(b"bytes", "text", 7).ok();
    assert_eq!(
        echoed,
        Some((vec![b'b', b'y', b't', b'e', b's'], "text".to_string(), 7))
    );
    let shape = client.shapes(Shape::Circle(1, 2), Some(0)).ok();
    assert_eq!(shape, Some(Ok(Shape::Circle(1, 3))));
    let shape = client
        .shapes(
            Shape::Named {
                id: 1,
                label: "x".to_string(),
            },
            Some(0),
        )
        .ok();
    assert_eq!(
        shape,
        Some(Err("Named { id: 1, label: \"x\" }".to_string()))
    );
    let shape = client.shapes(Shape::Empty, Some(0)).ok();
    assert_eq!(shape, Some(Err("Empty".to_string())));
    assert_eq!(client.later(b"ab", 3, 4).ok(), Some(10));
    let mut later = ::std::pin::pin!(client.later_async(b"ab", 3, 4));
    let mut cx = ::std::task::Context::from_waker(::std::task::Waker::noop());
    assert_eq!(
        ::std::future::Future::poll(later.as_mut(), &mut cx).map(|r| r.ok()),
        ::std::task::Poll::Ready(Some(10))
    );
    assert_eq!(
        client
            .point(
                Point {
                    name: "abc",
                    coords: vec![1, 2]
                },
                Unit
            )
            .ok(),
        Some(5)
    );
    assert_eq!(client.unit().ok(), Some(()));
    assert_eq!(
        client.nested(Nested::Leaf(1), Named([2, 3])).ok(),
        Some(Nested::Node(
            ::std::boxed::Box::new(Nested::Leaf(1)),
            vec![Nested::Leaf(2), Nested::Leaf(3)]
        ))
    );

    let net = SimNet::new(2, NetFaults::none(), service::NamesServer::new(Impl));
    let client = service::NamesClient::new(&net);
    assert_eq!(client.names(service::T(1), "ab").ok(), Some(service::S(3)));
}
