//! Replays the committed corpus of the shared-memory fuzz target (`fuzz/corpus/shm_region/`)
//! through the entry point it calls, on stable, in the ordinary test run.

#[test]
fn shm_region_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/shm_region");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "corpus {} is empty", dir.display());
    for path in entries {
        rpc_transport::shm::fuzzing::region(&std::fs::read(&path).expect("corpus file"));
    }
}
