//! Interface fingerprints, and the canonical text of tokens.
//!
//! An interface id is the 64-bit FNV-1a hash of a canonical text, folded to 32 bits. Method
//! ids depend on the schema fingerprints of their types, which only the compiler knows: they
//! are computed by `rpc_core::marshal::schema::method_id` in constants the macro emits.
//!
//! Texts are built from tokens, never from `TokenStream`'s `Display` (whose spacing is the
//! compiler's business and may change between releases), so that a client and a server built
//! by different compilers agree on every id.

use proc_macro2::{Delimiter, TokenStream, TokenTree};

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

/// Appends the canonical text of `tokens`: one space after each identifier and literal,
/// punctuation and delimiters as they are, invisible groups opened.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(src: &str) -> String {
        let tokens: TokenStream = src.parse().unwrap();
        let mut s = String::new();
        canonical_tokens(tokens, &mut s);
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
    fn canonical_text_ignores_spacing() {
        assert_eq!(canon("1 << 3"), canon("1<<3"));
        assert_eq!(canon("( -1 )"), "(-1 )");
        assert_ne!(canon("0x10"), canon("16"));
    }

    #[test]
    fn interface_ids_are_stable() {
        // Stable across builds, compilers and versions of this crate: a change here breaks
        // compatibility with every deployed peer. Method ids are pinned in rpc_core's
        // `marshal::schema` tests.
        assert_eq!(interface_id("Kv"), 0x8eab_489f);
        assert_ne!(interface_id("Kv"), interface_id("Kv2"));
    }
}
