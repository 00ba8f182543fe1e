//! Interface and method fingerprints.
//!
//! A fingerprint is the 64-bit FNV-1a hash of a canonical text, folded to 32 bits. The text is
//! built from tokens, never from `TokenStream`'s `Display` (whose spacing is the compiler's
//! business and may change between releases), so that a client and a server built by different
//! compilers agree on every id.

use proc_macro2::{Delimiter, TokenStream, TokenTree};
use quote::ToTokens;
use syn::visit_mut::VisitMut;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a over `bytes`, folded to 32 bits.
pub(crate) fn hash(bytes: &[u8]) -> u32 {
    let h = bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    });
    (h ^ (h >> 32)) as u32
}

/// The id of the interface called `name` on the wire.
pub(crate) fn interface_id(name: &str) -> u32 {
    hash(format!("rpc-interface/1\0{name}").as_bytes())
}

/// What a method's id covers.
pub(crate) struct MethodSig<'a> {
    pub(crate) interface: &'a str,
    pub(crate) method: &'a str,
    pub(crate) args: &'a [&'a syn::Type],
    /// `None` for `()`.
    pub(crate) ret: Option<&'a syn::Type>,
    pub(crate) idempotent: bool,
}

/// The id of a method: a hash of the interface name, the method name, the argument and return
/// types as written (lifetimes left out, tokens normalised) and the retry semantics.
pub(crate) fn method_id(sig: &MethodSig<'_>) -> u32 {
    let mut text = format!("rpc-method/1\0{}\0{}\0", sig.interface, sig.method);
    for ty in sig.args {
        canonical_type(ty, &mut text);
        text.push('\0');
    }
    text.push_str("->");
    match sig.ret {
        Some(ty) => canonical_type(ty, &mut text),
        None => text.push_str("()"),
    }
    text.push('\0');
    text.push_str(if sig.idempotent {
        "idempotent"
    } else {
        "at-most-once"
    });
    hash(text.as_bytes())
}

/// Appends the canonical text of `ty`: its tokens without lifetimes, one space after each
/// identifier and literal, punctuation and delimiters as they are, invisible groups opened.
pub(crate) fn canonical_type(ty: &syn::Type, out: &mut String) {
    let mut ty = ty.clone();
    StripLifetimes.visit_type_mut(&mut ty);
    canonical_tokens(ty.into_token_stream(), out);
}

pub(crate) fn canonical_tokens(tokens: TokenStream, out: &mut String) {
    for tt in tokens {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                out.push_str(open);
                canonical_tokens(g.stream(), out);
                out.push_str(close);
            }
            TokenTree::Ident(i) => {
                out.push_str(&i.to_string());
                out.push(' ');
            }
            TokenTree::Punct(p) => out.push(p.as_char()),
            TokenTree::Literal(l) => {
                out.push_str(&l.to_string());
                out.push(' ');
            }
        }
    }
}

/// Removes lifetimes from a type: they do not reach the wire.
struct StripLifetimes;

impl VisitMut for StripLifetimes {
    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        r.lifetime = None;
        syn::visit_mut::visit_type_reference_mut(self, r);
    }

    fn visit_path_arguments_mut(&mut self, args: &mut syn::PathArguments) {
        if let syn::PathArguments::AngleBracketed(a) = args {
            a.args = std::mem::take(&mut a.args)
                .into_iter()
                .filter(|arg| !matches!(arg, syn::GenericArgument::Lifetime(_)))
                .collect();
            if a.args.is_empty() {
                *args = syn::PathArguments::None;
            }
        }
        syn::visit_mut::visit_path_arguments_mut(self, args);
    }

    fn visit_type_trait_object_mut(&mut self, t: &mut syn::TypeTraitObject) {
        t.bounds = std::mem::take(&mut t.bounds)
            .into_iter()
            .filter(|b| !matches!(b, syn::TypeParamBound::Lifetime(_)))
            .collect();
        syn::visit_mut::visit_type_trait_object_mut(self, t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(src: &str) -> String {
        let ty: syn::Type = syn::parse_str(src).unwrap();
        let mut s = String::new();
        canonical_type(&ty, &mut s);
        s
    }

    #[test]
    fn fnv_1a_reference_values() {
        // 64-bit FNV-1a of "" and "a", folded.
        let fold = |h: u64| (h ^ (h >> 32)) as u32;
        assert_eq!(hash(b""), fold(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash(b"a"), fold(0xaf63_dc4c_8601_ec8c));
    }

    #[test]
    fn canonical_text_ignores_spacing_and_lifetimes() {
        assert_eq!(canon("&'a [u8]"), canon("& [ u8 ]"));
        assert_eq!(canon("Foo<'a, T>"), canon("Foo<T>"));
        assert_eq!(canon("Foo<'a>"), canon("Foo"));
        assert_eq!(canon("std::vec::Vec<u8>"), "std ::vec ::Vec <u8 >");
        assert_ne!(canon("Vec<u8>"), canon("Vec<u16>"));
        assert_ne!(canon("(u8, u16)"), canon("(u16, u8)"));
    }

    #[test]
    fn method_ids_cover_every_part_of_the_signature() {
        let u8_slice: syn::Type = syn::parse_str("&[u8]").unwrap();
        let string: syn::Type = syn::parse_str("String").unwrap();
        let base = MethodSig {
            interface: "Kv",
            method: "get",
            args: &[&u8_slice],
            ret: Some(&string),
            idempotent: false,
        };
        let id = method_id(&base);
        assert_ne!(
            id,
            method_id(&MethodSig {
                interface: "Kv2",
                ..base
            })
        );
        assert_ne!(
            id,
            method_id(&MethodSig {
                method: "got",
                ..base
            })
        );
        assert_ne!(id, method_id(&MethodSig { args: &[], ..base }));
        assert_ne!(
            id,
            method_id(&MethodSig {
                args: &[&string],
                ..base
            })
        );
        assert_ne!(id, method_id(&MethodSig { ret: None, ..base }));
        assert_ne!(
            id,
            method_id(&MethodSig {
                idempotent: true,
                ..base
            })
        );
        // Argument boundaries count: (A, B) is not (AB).
        let a: syn::Type = syn::parse_str("a::B").unwrap();
        let b: syn::Type = syn::parse_str("a").unwrap();
        let c: syn::Type = syn::parse_str("B").unwrap();
        assert_ne!(
            method_id(&MethodSig {
                args: &[&a],
                ..base
            }),
            method_id(&MethodSig {
                args: &[&b, &c],
                ..base
            })
        );
        // Stable across builds, compilers and versions of this crate: a change here breaks
        // compatibility with every deployed peer.
        assert_eq!(interface_id("Kv"), 0x8eab_489f);
        let option: syn::Type = syn::parse_str("Option<Vec<u8>>").unwrap();
        let get = MethodSig {
            ret: Some(&option),
            ..base
        };
        assert_eq!(method_id(&get), 0xbec8_2e9b);
    }

    #[test]
    fn a_known_collision() {
        // Found by search; tests/ui/id_collision.rs shows the compile error it causes.
        let sig = |method| MethodSig {
            interface: "Collide",
            method,
            args: &[],
            ret: None,
            idempotent: false,
        };
        assert_eq!(method_id(&sig("m23268")), 0x9c3a_780e);
        assert_eq!(method_id(&sig("m32351")), 0x9c3a_780e);
    }
}
