//! Collecting every error of an input before reporting, each spanned at its own token.

use std::fmt::Display;

use quote::ToTokens;
use syn::parse::ParseStream;
use syn::{Token, token};

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(e) => e.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records `message` at the span of `tokens`.
    pub(crate) fn at(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// Moves the errors of `other` here.
    pub(crate) fn push_all(&mut self, other: Errors) {
        if let Some(e) = other.0 {
            self.push(e);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// The errors as `compile_error!` invocations.
    pub(crate) fn into_compile_errors(self) -> proc_macro2::TokenStream {
        self.0.map(|e| e.to_compile_error()).unwrap_or_default()
    }
}

/// Skips the value of an unknown or malformed attribute argument (`= expr` or `(...)`), so that
/// parsing goes on and the next argument's errors are reported too.
pub(crate) fn skip_value(input: ParseStream<'_>) -> syn::Result<()> {
    if input.peek(Token![=]) {
        input.parse::<Token![=]>()?;
        input.parse::<syn::Expr>()?;
    } else if input.peek(token::Paren) {
        let _content;
        syn::parenthesized!(_content in input);
    }
    Ok(())
}

/// Parses `= "string"`, recording an error and returning `None` if the value is anything else.
pub(crate) fn string_value(
    meta: &syn::meta::ParseNestedMeta<'_>,
    errors: &mut Errors,
) -> syn::Result<Option<syn::LitStr>> {
    let key = meta.path.to_token_stream();
    if !meta.input.peek(Token![=]) {
        errors.at(&meta.path, format_args!("expected `{key} = \"...\"`"));
        skip_value(meta.input)?;
        return Ok(None);
    }
    let value: syn::Expr = meta.value()?.parse()?;
    match value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Ok(Some(s)),
        other => {
            errors.at(other, format_args!("expected a string: `{key} = \"...\"`"));
            Ok(None)
        }
    }
}

/// Checks that a flag argument (`idempotent`) has no value.
pub(crate) fn flag(meta: &syn::meta::ParseNestedMeta<'_>, errors: &mut Errors) -> syn::Result<()> {
    if meta.input.peek(Token![=]) || meta.input.peek(token::Paren) {
        let key = meta.path.to_token_stream();
        errors.at(&meta.path, format_args!("`{key}` takes no value"));
        skip_value(meta.input)?;
    }
    Ok(())
}

/// Parses the `crate = "path"` argument.
pub(crate) fn crate_path(
    meta: &syn::meta::ParseNestedMeta<'_>,
    errors: &mut Errors,
) -> syn::Result<Option<syn::Path>> {
    let Some(lit) = string_value(meta, errors)? else {
        return Ok(None);
    };
    match lit.parse::<syn::Path>() {
        Ok(path) => Ok(Some(path)),
        Err(_) => {
            errors.at(
                &lit,
                "expected a path to rpc_core, such as `crate = \"::my_rpc::core\"`",
            );
            Ok(None)
        }
    }
}
