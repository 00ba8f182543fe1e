//! `#[derive(Marshal)]`: `Encode`, `Decode` and `Schema` for structs and enums.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;

use crate::errors::{self, Errors};
use crate::types::{ReplaceLifetimes, replace_lifetimes};

pub(crate) fn expand(input: &syn::DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let options = Options::parse(&input.attrs, &mut errors);
    let no_attr = |attrs: &[syn::Attribute], errors: &mut Errors| {
        for attr in attrs.iter().filter(|a| a.path().is_ident("marshal")) {
            errors.at(
                attr,
                "#[marshal(...)] applies to the type, not to its fields or variants",
            );
        }
    };
    match &input.data {
        syn::Data::Struct(s) => s.fields.iter().for_each(|f| no_attr(&f.attrs, &mut errors)),
        syn::Data::Enum(e) => {
            for v in &e.variants {
                no_attr(&v.attrs, &mut errors);
                v.fields.iter().for_each(|f| no_attr(&f.attrs, &mut errors));
            }
        }
        syn::Data::Union(u) => {
            errors.at(u.union_token, "#[derive(Marshal)] does not support unions");
        }
    }
    if !errors.is_empty() {
        return errors.into_compile_errors();
    }
    let krate = options
        .krate
        .unwrap_or_else(|| syn::parse_quote!(::rpc_core));
    let marshal = match options.zerocopy {
        Some(span) => zerocopy(input, &krate, span),
        None => ordinary(input, &krate),
    };
    let schema = schema(
        input,
        &krate,
        options.zerocopy.is_some(),
        options.fingerprint.as_ref(),
    );
    quote!(#marshal #schema)
}

#[derive(Default)]
struct Options {
    /// Span of the `zerocopy` argument.
    zerocopy: Option<Span>,
    krate: Option<syn::Path>,
    /// `fingerprint = "..."`: the schema fingerprint is a hash of this name.
    fingerprint: Option<syn::LitStr>,
}

impl Options {
    fn parse(attrs: &[syn::Attribute], errors: &mut Errors) -> Self {
        let mut out = Self::default();
        let mut seen_crate = false;
        let mut seen_fingerprint = false;
        for attr in attrs.iter().filter(|a| a.path().is_ident("marshal")) {
            let result = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("zerocopy") {
                    if out.zerocopy.is_some() {
                        errors.at(&meta.path, "duplicate `zerocopy`");
                    }
                    out.zerocopy = Some(meta.path.span());
                    errors::flag(&meta, errors)
                } else if meta.path.is_ident("crate") {
                    if std::mem::replace(&mut seen_crate, true) {
                        errors.at(&meta.path, "duplicate `crate`");
                    }
                    out.krate = errors::crate_path(&meta, errors)?;
                    Ok(())
                } else if meta.path.is_ident("fingerprint") {
                    if std::mem::replace(&mut seen_fingerprint, true) {
                        errors.at(&meta.path, "duplicate `fingerprint`");
                    }
                    if let Some(name) = errors::string_value(&meta, errors)? {
                        if name.value().is_empty() {
                            errors.at(&name, "the fingerprint name cannot be empty");
                        } else {
                            out.fingerprint = Some(name);
                        }
                    }
                    Ok(())
                } else {
                    errors.at(
                        &meta.path,
                        "unknown #[marshal] argument: expected `zerocopy`, `crate = \"...\"` or \
                         `fingerprint = \"...\"`",
                    );
                    errors::skip_value(meta.input)
                }
            });
            if let Err(e) = result {
                errors.push(e);
            }
        }
        out
    }
}

/// The fields of a struct or variant: how to name each (`a` or `0`) and its type.
fn members(fields: &syn::Fields) -> Vec<(syn::Member, &syn::Type)> {
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let member = match &f.ident {
                Some(ident) => syn::Member::Named(ident.clone()),
                None => syn::Member::Unnamed(syn::Index {
                    index: i as u32,
                    span: f.ty.span(),
                }),
            };
            (member, &f.ty)
        })
        .collect()
}

/// `Encode`, `Decode` (fields in order; enums as a `u32` variant index and then the fields).
fn ordinary(input: &syn::DeriveInput, krate: &syn::Path) -> TokenStream {
    let name = &input.ident;
    let enc = syn::Ident::new("enc", Span::mixed_site());
    let dec = syn::Ident::new("dec", Span::mixed_site());
    let de = syn::Lifetime::new("'__de", Span::call_site());
    let a = syn::Lifetime::new("'__a", Span::call_site());
    let get = |ty: &syn::Type| quote_spanned!(ty.span()=> #krate::marshal::Decoder::get(#dec)?);
    let lifetimes: Vec<syn::Ident> = input
        .generics
        .lifetimes()
        .map(|l| l.lifetime.ident.clone())
        .collect();

    let (encode, decode, min_size) = match &input.data {
        syn::Data::Struct(s) => {
            let members = members(&s.fields);
            let encode = members.iter().map(|(m, ty)| {
                quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(&self.#m, #enc);)
            });
            let fields = members.iter().map(|(m, ty)| {
                let get = get(ty);
                quote!(#m: #get)
            });
            let sizes = members.iter().map(|(_, ty)| {
                let ty = replace_lifetimes(ty, &de, Some(&lifetimes));
                quote!(.saturating_add(<#ty as #krate::marshal::Decode<#de>>::MIN_SIZE))
            });
            (
                quote!(#(#encode)*),
                quote!(::core::result::Result::Ok(Self { #(#fields),* })),
                quote!(0usize #(#sizes)*),
            )
        }
        syn::Data::Enum(e) => {
            let tag = syn::Ident::new("tag", Span::mixed_site());
            let mut encode_arms = Vec::new();
            let mut decode_arms = Vec::new();
            for (i, v) in e.variants.iter().enumerate() {
                let index = u32::try_from(i).unwrap_or(u32::MAX);
                let vident = &v.ident;
                let members = members(&v.fields);
                let bindings: Vec<syn::Ident> = (0..members.len())
                    .map(|j| format_ident!("field{}", j, span = Span::mixed_site()))
                    .collect();
                let ms = members.iter().map(|(m, _)| m);
                let encode = members.iter().zip(&bindings).map(|((_, ty), b)| {
                    quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(#b, #enc);)
                });
                encode_arms.push(quote! {
                    Self::#vident { #(#ms: #bindings),* } => {
                        #krate::marshal::Encoder::put_u32(#enc, #index);
                        #(#encode)*
                    }
                });
                let fields = members.iter().map(|(m, ty)| {
                    let get = get(ty);
                    quote!(#m: #get)
                });
                decode_arms.push(quote! {
                    #index => ::core::result::Result::Ok(Self::#vident { #(#fields),* }),
                });
            }
            let encode = if e.variants.is_empty() {
                quote!(match *self {})
            } else {
                quote!(match self { #(#encode_arms)* })
            };
            let decode = quote! {
                match #krate::marshal::Decoder::get_u32(#dec)? {
                    #(#decode_arms)*
                    #tag => ::core::result::Result::Err(#krate::marshal::DecodeError::InvalidTag(#tag)),
                }
            };
            // The variant index; the smallest variant may have no fields.
            (encode, decode, quote!(4usize))
        }
        syn::Data::Union(_) => unreachable!("unions are refused before"),
    };

    // Encode: every type parameter must encode.
    let mut generics = input.generics.clone();
    for p in input.generics.type_params() {
        let ident = &p.ident;
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#ident: #krate::marshal::Encode));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let encode_impl = quote! {
        impl #impl_generics #krate::marshal::Encode for #name #ty_generics #where_clause {
            fn encode<#a>(&#a self, #enc: &mut #krate::marshal::Encoder<#a>) {
                #encode
            }
        }
    };

    // Decode<'__de>: every lifetime parameter becomes '__de (borrowed fields borrow from the
    // input), every type parameter must decode.
    let mut rewrite = ReplaceLifetimes {
        to: &de,
        only: Some(&lifetimes),
    };
    let mut params: Vec<syn::GenericParam> = vec![syn::parse_quote!(#de)];
    let mut args: Vec<TokenStream> = Vec::new();
    for p in &input.generics.params {
        match p {
            syn::GenericParam::Lifetime(_) => args.push(quote!(#de)),
            syn::GenericParam::Type(t) => {
                let mut t = t.clone();
                t.eq_token = None;
                t.default = None;
                rewrite.visit_type_param_mut(&mut t);
                args.push(t.ident.to_token_stream());
                params.push(syn::GenericParam::Type(t));
            }
            syn::GenericParam::Const(c) => {
                let mut c = c.clone();
                c.eq_token = None;
                c.default = None;
                args.push(c.ident.to_token_stream());
                params.push(syn::GenericParam::Const(c));
            }
        }
    }
    let mut where_clause = input
        .generics
        .where_clause
        .clone()
        .unwrap_or_else(|| syn::parse_quote!(where));
    for predicate in &mut where_clause.predicates {
        rewrite.visit_where_predicate_mut(predicate);
    }
    for p in input.generics.type_params() {
        let ident = &p.ident;
        where_clause
            .predicates
            .push(syn::parse_quote!(#ident: #krate::marshal::Decode<#de>));
    }
    let decode_impl = quote! {
        impl<#(#params),*> #krate::marshal::Decode<#de> for #name<#(#args),*> #where_clause {
            const MIN_SIZE: usize = #min_size;

            fn decode(
                #dec: &mut #krate::marshal::Decoder<#de>,
            ) -> ::core::result::Result<Self, #krate::marshal::DecodeError> {
                // Types that contain themselves recurse here: bound the depth.
                #krate::marshal::Decoder::nested(#dec, |#dec| { #decode })
            }
        }
    };
    quote! {
        const _: () = {
            #encode_impl
            #decode_impl
        };
    }
}

/// `#[marshal(zerocopy)]`: `ZeroCopy`, and `Encode`/`Decode` by reference to the value's
/// own bytes.
fn zerocopy(input: &syn::DeriveInput, krate: &syn::Path, span: Span) -> TokenStream {
    let name = &input.ident;
    let mut generics = input.generics.clone();
    for p in input.generics.type_params() {
        let ident = &p.ident;
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#ident: #krate::marshal::ZeroCopy));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    // A type missing one of zerocopy's traits fails here: point at the request for zero-copy.
    let zero_copy = quote_spanned!(span=> #krate::marshal::ZeroCopy);
    let name_at = syn::Ident::new(&name.to_string(), span);
    let params = generics.params.iter().map(|p| match p {
        syn::GenericParam::Type(t) => {
            let mut t = t.clone();
            t.eq_token = None;
            t.default = None;
            quote!(#t)
        }
        syn::GenericParam::Const(c) => {
            let mut c = c.clone();
            c.eq_token = None;
            c.default = None;
            quote!(#c)
        }
        syn::GenericParam::Lifetime(l) => quote!(#l),
    });
    let predicates = generics.where_clause.as_ref().map(|w| &w.predicates);
    quote! {
        impl #impl_generics #zero_copy for #name_at #ty_generics #where_clause {}
        #krate::__zerocopy_marshal!({#(#params),*} #name #ty_generics where {#predicates});
    }
}

/// `Schema`: a constant fingerprint of the type's shape (see `rpc_core::marshal::Schema`).
///
/// A struct hashes its name, generic arguments and fields (names and the fingerprints of
/// their types, in order); an enum its name, generic arguments and variants (names and
/// fields, in order). A zero-copy struct's bytes are its fields' in order, as the ordinary
/// encoding's are, so it hashes the same; a zero-copy enum is its own representation and
/// hashes its discriminants too. Mentions of the type itself in its fields hash as
/// `schema::Recursive`. `#[marshal(fingerprint = "...")]` replaces the fields by the name.
fn schema(
    input: &syn::DeriveInput,
    krate: &syn::Path,
    zerocopy: bool,
    fingerprint: Option<&syn::LitStr>,
) -> TokenStream {
    let name = &input.ident;
    let schema = quote!(#krate::marshal::Schema);
    let hasher = quote!(#krate::marshal::schema::Fingerprinter);
    let marker: syn::Type = syn::parse_quote!(#krate::marshal::schema::Recursive);

    // The generic arguments: type parameters by fingerprint, const parameters by value.
    let mut params = Vec::new();
    for p in &input.generics.params {
        match p {
            syn::GenericParam::Type(t) => {
                let ident = &t.ident;
                params.push(quote!(.u64(<#ident as #schema>::FINGERPRINT)));
            }
            syn::GenericParam::Const(c) => {
                let ident = &c.ident;
                params.push(quote!(.u64(#ident as u64)));
            }
            syn::GenericParam::Lifetime(_) => {}
        }
    }
    let generic_count = params.len() as u64;

    let fields = |fields: &syn::Fields| {
        let (kind, count) = match fields {
            syn::Fields::Named(f) => (0u64, f.named.len() as u64),
            syn::Fields::Unnamed(f) => (1, f.unnamed.len() as u64),
            syn::Fields::Unit => (2, 0),
        };
        let each = fields.iter().map(|f| {
            let mut ty = f.ty.clone();
            SubstituteSelf {
                name,
                marker: &marker,
            }
            .visit_type_mut(&mut ty);
            let field_name = f.ident.as_ref().map(|i| {
                let i = i.unraw().to_string();
                quote!(.str(#i))
            });
            let fp = quote_spanned!(f.ty.span()=> <#ty as #schema>::FINGERPRINT);
            quote!(#field_name .u64(#fp))
        });
        quote!(.u64(#kind).u64(#count) #(#each)*)
    };

    let type_name = name.unraw().to_string();
    let value = match (fingerprint, &input.data) {
        (Some(lit), _) if params.is_empty() => quote!(#krate::marshal::schema::named(#lit)),
        (Some(lit), _) => quote! {
            #hasher::new("rpc-schema/named-generic")
                .u64(#krate::marshal::schema::named(#lit))
                .u64(#generic_count) #(#params)*
                .finish()
        },
        (None, syn::Data::Struct(s)) => {
            let body = fields(&s.fields);
            quote! {
                #hasher::new("rpc-schema/struct")
                    .str(#type_name)
                    .u64(#generic_count) #(#params)*
                    #body
                    .finish()
            }
        }
        (None, syn::Data::Enum(e)) => {
            let tag = if zerocopy {
                "rpc-schema/zerocopy-enum"
            } else {
                "rpc-schema/enum"
            };
            let count = e.variants.len() as u64;
            let variants = e.variants.iter().map(|v| {
                let vname = v.ident.unraw().to_string();
                let discriminant = zerocopy.then(|| {
                    let mut text = String::new();
                    if let Some((_, expr)) = &v.discriminant {
                        crate::fingerprint::canonical_tokens(expr.to_token_stream(), &mut text);
                    }
                    quote!(.str(#text))
                });
                let body = fields(&v.fields);
                quote!(.str(#vname) #discriminant #body)
            });
            quote! {
                #hasher::new(#tag)
                    .str(#type_name)
                    .u64(#generic_count) #(#params)*
                    .u64(#count) #(#variants)*
                    .finish()
            }
        }
        (None, syn::Data::Union(_)) => unreachable!("unions are refused before"),
    };

    let mut generics = input.generics.clone();
    for p in input.generics.type_params() {
        let ident = &p.ident;
        generics
            .make_where_clause()
            .predicates
            .push(syn::parse_quote!(#ident: #schema));
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    quote! {
        impl #impl_generics #schema for #name #ty_generics #where_clause {
            const FINGERPRINT: u64 = #value;
        }
    }
}

/// Replaces the type being defined (its bare name, with any arguments, or `Self`) by the
/// marker that stands for it, so that a recursive type's fingerprint does not depend on
/// itself.
struct SubstituteSelf<'a> {
    name: &'a syn::Ident,
    marker: &'a syn::Type,
}

impl VisitMut for SubstituteSelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut syn::Type) {
        if let syn::Type::Path(p) = ty {
            if p.qself.is_none()
                && p.path.leading_colon.is_none()
                && p.path.segments.len() == 1
                && (p.path.segments[0].ident == *self.name || p.path.segments[0].ident == "Self")
            {
                *ty = self.marker.clone();
                return;
            }
        }
        syn::visit_mut::visit_type_mut(self, ty);
    }

    // Array lengths and other expressions are left alone.
    fn visit_expr_mut(&mut self, _: &mut syn::Expr) {}
}
