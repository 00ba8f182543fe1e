//! `#[rpc]`: parsing a trait into an [`Interface`], then generating its client and server.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::visit::Visit;

use crate::errors::{self, Errors};
use crate::fingerprint;
use crate::types::{self, ContextParam, Position};

/// Inherent methods of the generated client: a trait method may not be called like one.
const CLIENT_METHODS: &[&str] = &["new", "with", "transport"];

pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = TraitArgs::parse(args, &mut errors);
    let mut item: syn::ItemTrait = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "#[rpc] applies to a trait",
            ));
            let errors = errors.into_compile_errors();
            return quote!(#errors #item);
        }
    };
    let interface = Interface::parse(&mut item, args, &mut errors);
    if !errors.is_empty() {
        // Keep the trait, so that its users do not also fail to find it.
        let errors = errors.into_compile_errors();
        return quote!(#item #errors);
    }
    if interface.methods.iter().any(|m| m.asynchronous) {
        // Its futures run on the transport's event loop thread: they need not be `Send`.
        item.attrs
            .push(syn::parse_quote!(#[allow(async_fn_in_trait)]));
    }
    let generated = interface.generate();
    quote!(#item #generated)
}

/// The arguments of `#[rpc(...)]` on the trait.
#[derive(Default)]
struct TraitArgs {
    name: Option<syn::LitStr>,
    krate: Option<syn::Path>,
}

impl TraitArgs {
    fn parse(args: TokenStream, errors: &mut Errors) -> Self {
        let mut out = Self::default();
        let mut seen_crate = false;
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("name") {
                if out.name.is_some() {
                    errors.at(&meta.path, "duplicate `name`");
                }
                if let Some(name) = errors::string_value(&meta, errors)? {
                    if name.value().is_empty() {
                        errors.at(&name, "the interface name cannot be empty");
                    } else {
                        out.name = Some(name);
                    }
                }
            } else if meta.path.is_ident("crate") {
                if std::mem::replace(&mut seen_crate, true) {
                    errors.at(&meta.path, "duplicate `crate`");
                }
                out.krate = errors::crate_path(&meta, errors)?;
            } else if meta.path.is_ident("idempotent") || meta.path.is_ident("blocking") {
                errors.at(
                    &meta.path,
                    "`idempotent` and `blocking` apply to methods, not to the trait",
                );
                errors::skip_value(meta.input)?;
            } else {
                errors.at(
                    &meta.path,
                    "unknown #[rpc] argument: expected `name = \"...\"` or `crate = \"...\"`",
                );
                errors::skip_value(meta.input)?;
            }
            Ok(())
        });
        if let Err(e) = syn::parse::Parser::parse2(parser, args) {
            errors.push(e);
        }
        out
    }
}

/// An interface: the trait and what the macro learnt from it.
struct Interface {
    krate: syn::Path,
    vis: syn::Visibility,
    ident: syn::Ident,
    /// Name on the wire.
    name: String,
    id: u32,
    methods: Vec<Method>,
    /// Identifiers the signatures use: generated generic parameters must differ from them.
    taken: HashSet<String>,
}

struct Method {
    ident: syn::Ident,
    docs: Vec<syn::Attribute>,
    /// Lifetime parameters only.
    generics: syn::Generics,
    /// The handler takes `&CallContext` first.
    context: bool,
    args: Vec<Arg>,
    ret: Option<syn::Type>,
    idempotent: bool,
    blocking: bool,
    /// The handler is an `async fn`.
    asynchronous: bool,
}

struct Arg {
    /// The parameter's name in the client.
    ident: syn::Ident,
    ty: syn::Type,
}

impl Interface {
    fn parse(item: &mut syn::ItemTrait, args: TraitArgs, errors: &mut Errors) -> Self {
        if let Some(unsafety) = &item.unsafety {
            errors.at(unsafety, "an #[rpc] trait cannot be unsafe");
        }
        if let Some(auto) = &item.auto_token {
            errors.at(auto, "an #[rpc] trait cannot be an auto trait");
        }
        if !item.generics.params.is_empty() {
            errors.at(
                &item.generics.params,
                "an #[rpc] trait cannot be generic: its signatures are fixed on the wire",
            );
        }
        if let Some(w) = &item.generics.where_clause {
            errors.at(w, "an #[rpc] trait cannot have a where clause");
        }
        let name = match &args.name {
            Some(name) => name.value(),
            None => item.ident.unraw().to_string(),
        };
        let mut taken = HashSet::new();
        let mut methods: Vec<Method> = Vec::new();
        for trait_item in &mut item.items {
            let syn::TraitItem::Fn(f) = trait_item else {
                errors.at(&*trait_item, "an #[rpc] trait can only contain methods");
                continue;
            };
            IdentCollector(&mut taken).visit_signature(&f.sig);
            let Some(mut method) = Method::parse(f, errors) else {
                continue;
            };
            if method.docs.is_empty() {
                // The client's methods are documented even where the trait's are not.
                let doc = format!(
                    " Calls [`{}::{}`].",
                    item.ident.unraw(),
                    method.ident.unraw()
                );
                method.docs.push(syn::parse_quote!(#[doc = #doc]));
            }
            methods.push(method);
        }
        Self {
            krate: args.krate.unwrap_or_else(|| syn::parse_quote!(::rpc_core)),
            vis: item.vis.clone(),
            ident: item.ident.clone(),
            id: fingerprint::interface_id(&name),
            name,
            methods,
            taken,
        }
    }

    /// A generic parameter name starting with `base` that no signature uses.
    fn fresh(&self, base: &str) -> String {
        let mut name = base.to_owned();
        let mut n = 0;
        while self.taken.contains(&name) {
            n += 1;
            name = format!("{base}{n}");
        }
        name
    }

    fn generate(&self) -> TokenStream {
        let Self {
            krate,
            vis,
            ident: trait_ident,
            name,
            id,
            ..
        } = self;
        let interface_id = hex(*id);
        let bare = trait_ident.unraw();
        let client = format_ident!("{}Client", bare, span = trait_ident.span());
        let call = format_ident!("{}Call", bare, span = trait_ident.span());
        let server = format_ident!("{}Server", bare, span = trait_ident.span());
        let t = syn::Ident::new(&self.fresh("T"), Span::call_site());
        let s = syn::Ident::new(&self.fresh("S"), Span::call_site());
        let c = syn::Lifetime::new(&format!("'{}", self.fresh("c")), Span::call_site());
        let table = syn::Ident::new("__RPC_METHODS", Span::mixed_site());
        let ids = syn::Ident::new("__RpcMethodIds", Span::mixed_site());
        let count = self.methods.len();

        // Method ids depend on the schema fingerprints of the types, which only the compiler
        // knows: constants, evaluated at compile time.
        let id_consts = self.methods.iter().enumerate().map(|(i, m)| {
            let konst = method_const(i);
            let id = m.id_expr(krate, name);
            quote!(const #konst: u32 = #id;)
        });
        let collisions = self.methods.iter().enumerate().flat_map(|(j, b)| {
            let ids = &ids;
            self.methods[..j].iter().enumerate().map(move |(i, a)| {
                let (ka, kb) = (method_const(i), method_const(j));
                let message = format!(
                    "the ids of `{}` and `{}` in the #[rpc] trait `{}` collide: rename one of them",
                    a.ident.unraw(),
                    b.ident.unraw(),
                    trait_ident.unraw(),
                );
                quote_spanned! {b.ident.span()=>
                    const _: () = if #ids::#ka == #ids::#kb {
                        ::core::panic!(#message)
                    };
                }
            })
        });

        let descs = self.methods.iter().enumerate().map(|(i, m)| {
            let konst = method_const(i);
            let method_id = quote!(#ids::#konst);
            let method_name = m.ident.unraw().to_string();
            let (idempotent, blocking, asynchronous) = (m.idempotent, m.blocking, m.asynchronous);
            quote! {
                #krate::service::MethodDesc {
                    interface: #interface_id,
                    id: #method_id,
                    interface_name: #name,
                    name: #method_name,
                    idempotent: #idempotent,
                    blocking: #blocking,
                    asynchronous: #asynchronous,
                }
            }
        });

        let client_doc = format!(
            "Client of the [`{bare}`] interface.\n\nEach method marshals its arguments into a \
             shared descriptor that points at the caller's own memory, sends the call through \
             the transport, waits for the reply and decodes it. [`{client}::with`] sets the \
             options of a call and gives access to the reply's Lamport stamps."
        );
        let call_doc = format!(
            "Calls of the [`{bare}`] interface with explicit options, made by \
             [`{client}::with`]. Its methods return the whole reply: the value and the Lamport \
             stamps of the request and the reply."
        );
        let server_doc = format!(
            "Server dispatcher of the [`{bare}`] interface: decodes each request (borrowing \
             byte slices, strings and zero-copy values from the receive buffer), calls the \
             implementation and sends the encoded return value."
        );
        let call_name = call.to_string();

        let client_methods = self.methods.iter().map(|m| m.client_method(krate, vis));
        let call_methods = self
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| m.call_method(krate, vis, &t, &table, i));
        let f = syn::Lifetime::new(&format!("'{}", self.fresh("f")), Span::call_site());
        let async_client_methods = self
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| m.async_client_method(krate, vis, &t, &table, i, &f));
        let async_call_methods = self
            .methods
            .iter()
            .enumerate()
            .map(|(i, m)| m.async_call_method(krate, vis, &t, &c, &table, i, &f));
        let async_arms = self
            .methods
            .iter()
            .enumerate()
            .filter(|(_, m)| m.asynchronous)
            .map(|(i, m)| {
                let konst = method_const(i);
                m.async_arm(
                    krate,
                    trait_ident,
                    &s,
                    &ctx_async(),
                    &request_async(),
                    quote!(#ids::#konst),
                )
            });
        let call_async = self.methods.iter().any(|m| m.asynchronous).then(|| {
            let (ctx, request) = (ctx_async(), request_async());
            quote! {
                fn call_async(
                    self: ::std::sync::Arc<Self>,
                    #ctx: #krate::service::CallContext,
                    #request: #krate::service::RequestBuf,
                ) -> ::core::option::Option<#krate::service::AsyncCall> {
                    match #ctx.method {
                        #(#async_arms)*
                        _ => ::core::option::Option::None,
                    }
                }
            }
        });
        let ctx = syn::Ident::new("ctx", Span::mixed_site());
        let request = syn::Ident::new("request", Span::mixed_site());
        let sink = syn::Ident::new("sink", Span::mixed_site());
        let arms = self.methods.iter().enumerate().map(|(i, m)| {
            let konst = method_const(i);
            m.server_arm(
                krate,
                trait_ident,
                &s,
                &ctx,
                &request,
                &sink,
                quote!(#ids::#konst),
            )
        });
        let unused = self
            .methods
            .is_empty()
            .then(|| quote!(let _ = (#request, #sink);));

        quote! {
            #[doc = #client_doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug)]
            #vis struct #client<#t> {
                transport: #t,
            }

            #[doc = #call_doc]
            #vis struct #call<#c, #t> {
                transport: &#c #t,
                options: #krate::service::CallOptions,
            }

            #[doc = #server_doc]
            #[derive(::core::clone::Clone, ::core::fmt::Debug, ::core::default::Default)]
            #vis struct #server<#s> {
                service: #s,
            }

            const _: () = {
                struct #ids;

                impl #ids {
                    #(#id_consts)*
                }

                #(#collisions)*

                static #table: [#krate::service::MethodDesc; #count] = [#(#descs),*];

                impl<#t> #client<#t> {
                    /// A client that sends its calls through `transport`.
                    #vis fn new(transport: #t) -> Self {
                        Self { transport }
                    }

                    /// Calls with `options` (a timeout), returning the whole reply, Lamport
                    /// stamps included.
                    #vis fn with(&self, options: #krate::service::CallOptions) -> #call<'_, #t> {
                        #call { transport: &self.transport, options }
                    }

                    /// The transport.
                    #vis fn transport(&self) -> &#t {
                        &self.transport
                    }
                }

                impl<#t: #krate::service::Transport> #client<#t> {
                    #(#client_methods)*
                }

                impl<#c, #t: #krate::service::Transport> #call<#c, #t> {
                    #(#call_methods)*
                }

                impl<#t: #krate::service::AsyncTransport> #client<#t> {
                    #(#async_client_methods)*
                }

                impl<#c, #t: #krate::service::AsyncTransport> #call<#c, #t> {
                    #(#async_call_methods)*
                }

                impl<#t> ::core::clone::Clone for #call<'_, #t> {
                    fn clone(&self) -> Self {
                        *self
                    }
                }

                impl<#t> ::core::marker::Copy for #call<'_, #t> {}

                impl<#t> ::core::fmt::Debug for #call<'_, #t> {
                    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                        f.debug_struct(#call_name).field("options", &self.options).finish_non_exhaustive()
                    }
                }

                impl<#s> #server<#s> {
                    /// A dispatcher calling `service`.
                    #vis fn new(service: #s) -> Self {
                        Self { service }
                    }

                    /// The implementation.
                    #vis fn get_ref(&self) -> &#s {
                        &self.service
                    }

                    /// The implementation, taken back.
                    #vis fn into_inner(self) -> #s {
                        self.service
                    }
                }

                impl<#s> #krate::service::Service for #server<#s>
                where
                    #s: #trait_ident + ::core::marker::Send + ::core::marker::Sync + 'static,
                {
                    fn interface(&self) -> u32 {
                        #interface_id
                    }

                    fn methods(&self) -> &'static [#krate::service::MethodDesc] {
                        &#table
                    }

                    fn call(
                        &self,
                        #ctx: &#krate::service::CallContext,
                        #request: &[u8],
                        #sink: &mut dyn #krate::service::ReplySink,
                    ) -> ::core::result::Result<(), #krate::service::DispatchError> {
                        if #ctx.interface != #interface_id {
                            return ::core::result::Result::Err(
                                #krate::service::DispatchError::UnknownInterface,
                            );
                        }
                        #unused
                        match #ctx.method {
                            #(#arms)*
                            _ => ::core::result::Result::Err(#krate::service::DispatchError::UnknownMethod),
                        }
                    }

                    #call_async
                }
            };
        }
    }
}

fn ctx_async() -> syn::Ident {
    syn::Ident::new("ctx", Span::mixed_site())
}

fn request_async() -> syn::Ident {
    syn::Ident::new("request", Span::mixed_site())
}

impl Method {
    fn parse(f: &mut syn::TraitItemFn, errors: &mut Errors) -> Option<Self> {
        // This method's own errors: any of them means no code is generated for it.
        let mut local = Errors::default();
        let mut idempotent = false;
        let mut blocking = false;
        let mut docs = Vec::new();
        for attr in std::mem::take(&mut f.attrs) {
            if attr.path().is_ident("rpc") {
                parse_method_attr(&attr, &mut idempotent, &mut blocking, &mut local);
                continue;
            }
            if attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr") {
                local.at(
                    &attr,
                    "#[cfg] is not supported on the methods of an #[rpc] trait",
                );
            }
            if attr.path().is_ident("doc") {
                docs.push(attr.clone());
            }
            f.attrs.push(attr);
        }

        let sig = &f.sig;
        if let Some(t) = &sig.constness {
            local.at(t, "an #[rpc] method cannot be const");
        }
        if let (Some(t), true) = (&sig.asyncness, blocking) {
            local.at(
                t,
                "an async #[rpc] method runs on the transport's event loop, which goes on \
                 while it awaits: it cannot be #[rpc(blocking)] as well",
            );
        }
        if let Some(t) = &sig.unsafety {
            local.at(t, "an #[rpc] method cannot be unsafe");
        }
        if let Some(t) = &sig.abi {
            local.at(t, "an #[rpc] method cannot have an ABI");
        }
        if let Some(t) = &sig.variadic {
            local.at(t, "an #[rpc] method cannot be variadic");
        }
        for param in &sig.generics.params {
            if !matches!(param, syn::GenericParam::Lifetime(_)) {
                local.at(
                    param,
                    "an #[rpc] method cannot be generic: its signature is fixed on the wire \
                     (lifetime parameters are allowed)",
                );
            }
        }
        if let Some(w) = &sig.generics.where_clause {
            for p in &w.predicates {
                if !matches!(p, syn::WherePredicate::Lifetime(_)) {
                    local.at(p, "an #[rpc] method cannot have type bounds");
                }
            }
        }
        match sig.receiver() {
            Some(r)
                if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() => {}
            Some(r) => local.at(
                r,
                "an #[rpc] method takes `&self`: the server calls it concurrently through a \
                 shared reference",
            ),
            None => local.at(
                &sig.ident,
                "an #[rpc] method takes `&self` as its first parameter",
            ),
        }
        let name = sig.ident.unraw().to_string();
        if CLIENT_METHODS.contains(&name.as_str()) {
            local.at(
                &sig.ident,
                format_args!(
                    "an #[rpc] method cannot be called `{name}`: the generated client has an \
                     inherent method of that name"
                ),
            );
        }

        let mut context = false;
        let mut args = Vec::new();
        let typed = sig.inputs.iter().filter_map(|a| match a {
            syn::FnArg::Typed(t) => Some(t),
            syn::FnArg::Receiver(_) => None,
        });
        for (i, pt) in typed.enumerate() {
            match types::context_param(&pt.ty) {
                ContextParam::Yes if i == 0 => {
                    context = true;
                    continue;
                }
                ContextParam::Yes => {
                    local.at(
                        &pt.ty,
                        "the call context must be the first parameter after `&self`",
                    );
                    continue;
                }
                ContextParam::Misused => {
                    local.at(&pt.ty, "take the call context as `&CallContext`");
                    continue;
                }
                ContextParam::No => {}
            }
            types::check(&pt.ty, Position::Argument, &mut local);
            let ident = match &*pt.pat {
                syn::Pat::Ident(p) if p.subpat.is_none() => p.ident.clone(),
                _ => format_ident!("arg{}", i, span = Span::mixed_site()),
            };
            args.push(Arg {
                ident,
                ty: (*pt.ty).clone(),
            });
        }
        let ret = match &sig.output {
            syn::ReturnType::Default => None,
            syn::ReturnType::Type(_, ty) => {
                types::check(ty, Position::Return, &mut local);
                Some((**ty).clone())
            }
        };
        if !local.is_empty() {
            errors.push_all(local);
            return None;
        }
        Some(Self {
            asynchronous: sig.asyncness.is_some(),
            ident: sig.ident.clone(),
            docs,
            generics: sig.generics.clone(),
            context,
            args,
            ret,
            idempotent,
            blocking,
        })
    }

    /// The method's id, as a constant expression: a hash of the interface name, the method
    /// name, the schema fingerprints of the argument and return types (lifetimes set to
    /// `'static`: they do not travel) and the retry semantics.
    fn id_expr(&self, krate: &syn::Path, interface: &str) -> TokenStream {
        let static_ = syn::Lifetime::new("'static", Span::call_site());
        let fingerprint = |ty: &syn::Type| {
            let ty = types::replace_lifetimes(ty, &static_, None);
            quote_spanned!(ty.span()=> <#ty as #krate::marshal::Schema>::FINGERPRINT)
        };
        let args = self.args.iter().map(|a| fingerprint(&a.ty));
        let ret = match &self.ret {
            Some(ty) => fingerprint(ty),
            None => quote!(<() as #krate::marshal::Schema>::FINGERPRINT),
        };
        let method = self.ident.unraw().to_string();
        let idempotent = self.idempotent;
        quote! {
            #krate::marshal::schema::method_id(
                #interface,
                #method,
                &[#(#args),*],
                #ret,
                #idempotent,
            )
        }
    }

    fn ret(&self) -> TokenStream {
        match &self.ret {
            Some(ty) => quote!(#ty),
            None => quote!(()),
        }
    }

    /// `fn name<'a>(&self, a: A, b: B)`, as the client shows it.
    fn client_signature(&self, vis: &syn::Visibility) -> TokenStream {
        let ident = &self.ident;
        let (generics, _, where_clause) = self.generics.split_for_impl();
        let params = self
            .args
            .iter()
            .map(|Arg { ident, ty }| quote!(#ident: #ty));
        quote!(#vis fn #ident #generics(&self, #(#params),*) #where_clause)
    }

    fn client_method(&self, krate: &syn::Path, vis: &syn::Visibility) -> TokenStream {
        let docs = &self.docs;
        let sig = self.client_signature(vis);
        let ret = self.ret();
        let ident = &self.ident;
        let args = self.args.iter().map(|a| &a.ident);
        let reply = syn::Ident::new("reply", Span::mixed_site());
        quote! {
            #(#docs)*
            #sig -> ::core::result::Result<#ret, #krate::error::CallError> {
                ::core::result::Result::map(
                    self.with(#krate::service::CallOptions::new()).#ident(#(#args),*),
                    |#reply| #reply.value,
                )
            }
        }
    }

    fn call_method(
        &self,
        krate: &syn::Path,
        vis: &syn::Visibility,
        t: &syn::Ident,
        table: &syn::Ident,
        index: usize,
    ) -> TokenStream {
        let docs = &self.docs;
        let sig = self.client_signature(vis);
        let ret = self.ret();
        let enc = syn::Ident::new("enc", Span::mixed_site());
        let body = syn::Ident::new("body", Span::mixed_site());
        let encode = self.args.iter().map(|Arg { ident, ty }| {
            quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(&#ident, &mut #enc);)
        });
        let decode = match &self.ret {
            Some(ty) => quote_spanned!(ty.span()=> #krate::marshal::decode::<#ty>(#body)),
            None => quote!(#krate::marshal::decode::<()>(#body)),
        };
        let mut_ = (!self.args.is_empty()).then(|| quote!(mut));
        quote! {
            #(#docs)*
            #sig -> ::core::result::Result<#krate::service::Reply<#ret>, #krate::error::CallError> {
                let #mut_ #enc = #krate::marshal::Encoder::new();
                #(#encode)*
                <#t as #krate::service::Transport>::call(
                    self.transport,
                    &#table[#index],
                    &self.options,
                    &#enc,
                    |#body: &[u8]| #decode,
                )
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn server_arm(
        &self,
        krate: &syn::Path,
        trait_ident: &syn::Ident,
        s: &syn::Ident,
        ctx: &syn::Ident,
        request: &syn::Ident,
        sink: &syn::Ident,
        id: TokenStream,
    ) -> TokenStream {
        let ident = &self.ident;
        let dec = syn::Ident::new("dec", Span::mixed_site());
        let enc = syn::Ident::new("enc", Span::mixed_site());
        let ret = syn::Ident::new("ret", Span::mixed_site());
        let elided = syn::Lifetime::new("'_", Span::call_site());
        let vars: Vec<syn::Ident> = (0..self.args.len())
            .map(|i| format_ident!("arg{}", i, span = Span::mixed_site()))
            .collect();
        let decode = if self.args.is_empty() {
            quote!(#krate::marshal::Decoder::finish(#krate::marshal::Decoder::new(#request))?;)
        } else {
            let lets = self.args.iter().zip(&vars).map(|(arg, var)| {
                let ty = types::replace_lifetimes(&arg.ty, &elided, None);
                quote_spanned! {arg.ty.span()=>
                    let #var: #ty = #krate::marshal::Decoder::get(&mut #dec)?;
                }
            });
            quote! {
                let mut #dec = #krate::marshal::Decoder::new(#request);
                #(#lets)*
                #krate::marshal::Decoder::finish(#dec)?;
            }
        };
        let context = self.context.then(|| quote!(#ctx,));
        let call = quote!(<#s as #trait_ident>::#ident(&self.service, #context #(#vars),*));
        let reply = match &self.ret {
            Some(ty) => {
                // Point a missing `Encode` at the return type.
                let value = syn::Ident::new("ret", Span::mixed_site().located_at(ty.span()));
                let encode = quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(&#value, &mut #enc););
                quote! {
                    let #ret = #call;
                    let mut #enc = #krate::marshal::Encoder::new();
                    #encode
                }
            }
            None => quote! {
                #call;
                let #enc = #krate::marshal::Encoder::new();
            },
        };
        if self.asynchronous {
            // Transports poll async handlers on their event loop (`call_async`).
            return quote! {
                #id => {
                    let _ = (#request, #sink);
                    ::core::result::Result::Err(#krate::service::DispatchError::Asynchronous)
                }
            };
        }
        quote! {
            #id => {
                #decode
                #reply
                #krate::service::ReplySink::send(#sink, &#enc);
                ::core::result::Result::Ok(())
            }
        }
    }

    /// The signature of the async client form: every argument borrowed for `'f`, as long as
    /// the call's future, which keeps the descriptor over them until the reply.
    fn async_signature(
        &self,
        vis: &syn::Visibility,
        f: &syn::Lifetime,
        receiver: TokenStream,
    ) -> TokenStream {
        let ident = format_ident!("{}_async", self.ident.unraw(), span = self.ident.span());
        let params = self.args.iter().map(|Arg { ident, ty }| {
            let ty = types::replace_lifetimes(ty, f, None);
            quote!(#ident: #ty)
        });
        quote!(#vis fn #ident<#f>(#receiver, #(#params),*))
    }

    fn encode_args(&self, krate: &syn::Path, enc: &syn::Ident) -> TokenStream {
        let encode = self.args.iter().map(|Arg { ident, ty }| {
            quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(&#ident, &mut #enc);)
        });
        quote!(#(#encode)*)
    }

    fn decode_fn(&self, krate: &syn::Path) -> TokenStream {
        let body = syn::Ident::new("body", Span::mixed_site());
        let ret = self.ret();
        let decode = match &self.ret {
            Some(ty) => quote_spanned!(ty.span()=> #krate::marshal::decode::<#ty>(#body)),
            None => quote!(#krate::marshal::decode::<()>(#body)),
        };
        quote!(|#body: &[u8]| -> ::core::result::Result<#ret, #krate::error::DecodeError> { #decode })
    }

    /// The body of an async client form: a future that owns the arguments (so that the
    /// descriptor built over them lives inside it, as long as the call), builds the
    /// descriptor when first polled and awaits the transport's call.
    fn async_body(
        &self,
        krate: &syn::Path,
        t: &syn::Ident,
        transport: TokenStream,
        options: TokenStream,
        (table, index): (&syn::Ident, usize),
        value_only: bool,
    ) -> TokenStream {
        let enc = syn::Ident::new("enc", Span::mixed_site());
        let reply = syn::Ident::new("reply", Span::mixed_site());
        let encode = self.encode_args(krate, &enc);
        let decode = self.decode_fn(krate);
        let mut_ = (!self.args.is_empty()).then(|| quote!(mut));
        // The descriptor is built in a block of its own, so that its storage ends when it is
        // moved into the call: the future then holds one descriptor, not two.
        let call = quote! {
            <#t as #krate::service::AsyncTransport>::call_async(
                #transport,
                &#table[#index],
                #options,
                {
                    let #mut_ #enc = #krate::marshal::Encoder::new();
                    #encode
                    #enc
                },
                #decode,
            )
            .await
        };
        let result = if value_only {
            quote!(::core::result::Result::map(#call, |#reply| #reply.value))
        } else {
            call
        };
        quote! {
            async move { #result }
        }
    }

    fn async_client_method(
        &self,
        krate: &syn::Path,
        vis: &syn::Visibility,
        t: &syn::Ident,
        table: &syn::Ident,
        index: usize,
        f: &syn::Lifetime,
    ) -> TokenStream {
        let sig = self.async_signature(vis, f, quote!(&#f self));
        let ret = self.ret();
        let body = self.async_body(
            krate,
            t,
            quote!(&self.transport),
            quote!(#krate::service::CallOptions::new()),
            (table, index),
            true,
        );
        let doc = format!(
            " As [`Self::{}`], as a future that holds no thread: many calls can be in flight \
             at once from one thread (join them, or await them under any executor). The \
             arguments stay borrowed until the call ends; dropping the future cancels the call.",
            self.ident.unraw()
        );
        quote! {
            #[doc = #doc]
            #sig -> impl ::core::future::Future<
                Output = ::core::result::Result<#ret, #krate::error::CallError>,
            > + #f {
                #body
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn async_call_method(
        &self,
        krate: &syn::Path,
        vis: &syn::Visibility,
        t: &syn::Ident,
        c: &syn::Lifetime,
        table: &syn::Ident,
        index: usize,
        f: &syn::Lifetime,
    ) -> TokenStream {
        let sig = self.async_signature(vis, f, quote!(&self));
        let ret = self.ret();
        let transport = syn::Ident::new("transport", Span::mixed_site());
        let options = syn::Ident::new("options", Span::mixed_site());
        let body = self.async_body(
            krate,
            t,
            quote!(#transport),
            quote!(#options),
            (table, index),
            false,
        );
        let doc = format!(
            " As [`Self::{}`], as a future that holds no thread.",
            self.ident.unraw()
        );
        quote! {
            #[doc = #doc]
            #sig -> impl ::core::future::Future<
                Output = ::core::result::Result<#krate::service::Reply<#ret>, #krate::error::CallError>,
            > + #f
            where
                #c: #f,
            {
                let #transport: &#f #t = self.transport;
                let #options = self.options;
                #body
            }
        }
    }

    /// The arm of `call_async` for an async handler: a future that owns the request buffer,
    /// decodes the arguments from it in place, awaits the handler and encodes what it returns.
    fn async_arm(
        &self,
        krate: &syn::Path,
        trait_ident: &syn::Ident,
        s: &syn::Ident,
        ctx: &syn::Ident,
        request: &syn::Ident,
        id: TokenStream,
    ) -> TokenStream {
        let ident = &self.ident;
        let dec = syn::Ident::new("dec", Span::mixed_site());
        let enc = syn::Ident::new("enc", Span::mixed_site());
        let ret = syn::Ident::new("ret", Span::mixed_site());
        let elided = syn::Lifetime::new("'_", Span::call_site());
        let vars: Vec<syn::Ident> = (0..self.args.len())
            .map(|i| format_ident!("arg{}", i, span = Span::mixed_site()))
            .collect();
        let lets = self.args.iter().zip(&vars).map(|(arg, var)| {
            let ty = types::replace_lifetimes(&arg.ty, &elided, None);
            quote_spanned! {arg.ty.span()=>
                let #var: #ty = #krate::marshal::Decoder::get(&mut #dec)?;
            }
        });
        let context = self.context.then(|| quote!(&#ctx,));
        let call = quote!(<#s as #trait_ident>::#ident(&self.service, #context #(#vars),*).await);
        let encode = match &self.ret {
            Some(ty) => {
                let value = syn::Ident::new("ret", Span::mixed_site().located_at(ty.span()));
                let encode = quote_spanned!(ty.span()=> #krate::marshal::Encode::encode(&#value, &mut #enc););
                quote! {
                    let #ret = #call;
                    let mut #enc = #krate::marshal::Encoder::new();
                    #encode
                }
            }
            None => quote! {
                #call;
                let #enc = #krate::marshal::Encoder::new();
            },
        };
        quote! {
            #id => ::core::option::Option::Some(::std::boxed::Box::pin(async move {
                let #request = #request;
                #[allow(unused_mut)]
                let mut #dec = #krate::marshal::Decoder::new(#request.body());
                #(#lets)*
                #krate::marshal::Decoder::finish(#dec)?;
                #encode
                ::core::result::Result::Ok(#krate::marshal::Encoder::to_vec(&#enc))
            })),
        }
    }
}

fn parse_method_attr(
    attr: &syn::Attribute,
    idempotent: &mut bool,
    blocking: &mut bool,
    errors: &mut Errors,
) {
    let syn::Meta::List(list) = &attr.meta else {
        errors.at(
            attr,
            "expected `#[rpc(idempotent)]`, `#[rpc(blocking)]` or `#[rpc(idempotent, blocking)]`",
        );
        return;
    };
    let result = list.parse_nested_meta(|meta| {
        let flag = if meta.path.is_ident("idempotent") {
            &mut *idempotent
        } else if meta.path.is_ident("blocking") {
            &mut *blocking
        } else {
            errors.at(
                &meta.path,
                "unknown #[rpc] method argument: expected `idempotent` or `blocking`",
            );
            return errors::skip_value(meta.input);
        };
        if std::mem::replace(flag, true) {
            errors.at(&meta.path, "duplicate argument");
        }
        errors::flag(&meta, errors)
    });
    if let Err(e) = result {
        errors.push(e);
    }
}

/// Collects the identifiers of a signature.
struct IdentCollector<'a>(&'a mut HashSet<String>);

impl Visit<'_> for IdentCollector<'_> {
    fn visit_ident(&mut self, i: &proc_macro2::Ident) {
        self.0.insert(i.to_string());
    }
}

/// The name of the constant holding the id of the `index`th method.
fn method_const(index: usize) -> syn::Ident {
    format_ident!("M{}", index, span = Span::mixed_site())
}

/// A `u32` literal in hexadecimal, as ids read best.
fn hex(v: u32) -> syn::LitInt {
    syn::LitInt::new(&format!("{v:#010x}_u32"), Span::call_site())
}
