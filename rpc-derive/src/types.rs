//! What may cross the wire in an `#[rpc]` signature, and rewriting lifetimes.

use syn::visit::Visit;
use syn::visit_mut::VisitMut;

use crate::errors::Errors;

/// Where a type appears.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    Argument,
    Return,
}

/// Reports every part of `ty` that cannot be marshalled.
pub(crate) fn check(ty: &syn::Type, position: Position, errors: &mut Errors) {
    Checker { position, errors }.visit_type(ty);
}

struct Checker<'e> {
    position: Position,
    errors: &'e mut Errors,
}

impl<'ast> Visit<'ast> for Checker<'_> {
    fn visit_type(&mut self, ty: &'ast syn::Type) {
        let message = match ty {
            syn::Type::ImplTrait(_) => {
                "`impl Trait` is not supported in an #[rpc] method: name a concrete type"
            }
            syn::Type::TraitObject(_) => "trait objects cannot be marshalled: name a concrete type",
            syn::Type::Ptr(_) => "raw pointers cannot be marshalled",
            syn::Type::BareFn(_) => "function pointers cannot be marshalled",
            syn::Type::Never(_) => "`!` cannot be marshalled",
            syn::Type::Infer(_) => "the type must be written out",
            syn::Type::Macro(_) => {
                "type macros are not supported in an #[rpc] method: name the type"
            }
            syn::Type::Reference(r) if r.mutability.is_some() => {
                "`&mut` is not supported: a remote call cannot write through a reference; \
                 return the new value instead"
            }
            syn::Type::Reference(_) if self.position == Position::Return => {
                "a return type cannot borrow: return an owned type (`Vec<u8>`, `String`, ...)"
            }
            syn::Type::Verbatim(_) => "unsupported type",
            _ => return syn::visit::visit_type(self, ty),
        };
        self.errors.at(ty, message);
    }

    fn visit_type_path(&mut self, p: &'ast syn::TypePath) {
        if p.qself.is_some() {
            self.errors.at(
                p,
                "qualified paths are not supported in an #[rpc] method: name the type",
            );
            return;
        }
        if p.path.segments.first().is_some_and(|s| s.ident == "Self") {
            self.errors.at(
                p,
                "`Self` is not supported in an #[rpc] method: name the type",
            );
            return;
        }
        syn::visit::visit_type_path(self, p);
    }

    fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
        match self.position {
            Position::Return => self
                .errors
                .at(l, "a return type cannot borrow: return an owned type"),
            Position::Argument if l.ident == "static" => self.errors.at(
                l,
                "an argument cannot borrow for `'static`: the server decodes it from the \
                 request buffer; take an owned type, or a reference of any lifetime",
            ),
            Position::Argument => {}
        }
    }

    // Array lengths are expressions; nothing in them travels.
    fn visit_expr(&mut self, _: &'ast syn::Expr) {}
}

/// Whether `ty` is `&CallContext` (any path ending in `CallContext`, any lifetime), and if it
/// names `CallContext` in a form other than a shared reference, the span to complain at.
pub(crate) fn context_param(ty: &syn::Type) -> ContextParam {
    fn names_context(ty: &syn::Type) -> bool {
        match ty {
            syn::Type::Path(p) => {
                p.qself.is_none()
                    && p.path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "CallContext" && s.arguments.is_none())
            }
            syn::Type::Paren(p) => names_context(&p.elem),
            syn::Type::Group(g) => names_context(&g.elem),
            _ => false,
        }
    }
    match ty {
        syn::Type::Reference(r) if names_context(&r.elem) => {
            if r.mutability.is_some() {
                ContextParam::Misused
            } else {
                ContextParam::Yes
            }
        }
        syn::Type::Group(g) => context_param(&g.elem),
        ty if names_context(ty) => ContextParam::Misused,
        _ => ContextParam::No,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ContextParam {
    /// `&CallContext`.
    Yes,
    /// `CallContext` by value or `&mut`.
    Misused,
    No,
}

/// Replaces lifetimes in a type by `to`: those named in `only`, or else every one but
/// `'static` (named, `'_` or elided).
pub(crate) fn replace_lifetimes(
    ty: &syn::Type,
    to: &syn::Lifetime,
    only: Option<&[syn::Ident]>,
) -> syn::Type {
    let mut ty = ty.clone();
    ReplaceLifetimes { to, only }.visit_type_mut(&mut ty);
    ty
}

/// The lifetime rewriter of [`replace_lifetimes`], for other syntax trees.
pub(crate) struct ReplaceLifetimes<'l> {
    pub(crate) to: &'l syn::Lifetime,
    pub(crate) only: Option<&'l [syn::Ident]>,
}

impl VisitMut for ReplaceLifetimes<'_> {
    fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
        let replace = match self.only {
            Some(only) => only.contains(&l.ident),
            None => l.ident != "static",
        };
        if replace {
            *l = syn::Lifetime::new(&format!("'{}", self.to.ident), l.span());
        }
    }

    fn visit_type_reference_mut(&mut self, r: &mut syn::TypeReference) {
        match &mut r.lifetime {
            Some(l) => self.visit_lifetime_mut(l),
            None if self.only.is_none() => r.lifetime = Some(self.to.clone()),
            None => {}
        }
        self.visit_type_mut(&mut r.elem);
    }
}
