//! Compile errors of `#[rpc]` and `#[derive(Marshal)]`: each case holds the expected
//! diagnostics in a `.stderr` file beside it (`TRYBUILD=overwrite` regenerates them).

#[test]
fn compile_errors() {
    trybuild::TestCases::new().compile_fail("tests/ui/*.rs");
}
