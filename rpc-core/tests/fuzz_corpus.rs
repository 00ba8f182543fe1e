//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points
//! the fuzz targets call, on stable, as part of the ordinary test run.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "corpus {} is empty", dir.display());
    for path in entries {
        let data = std::fs::read(&path).expect("corpus file");
        run(&data);
    }
}

#[test]
fn packet_corpus() {
    replay("packet", rpc_core::fuzzing::packet);
}

#[test]
fn server_corpus() {
    replay("server", rpc_core::fuzzing::server);
}

#[test]
fn client_corpus() {
    replay("client", rpc_core::fuzzing::client);
}

#[test]
fn reassembly_corpus() {
    replay("reassembly", rpc_core::fuzzing::reassembly);
}

#[test]
fn decode_corpus() {
    replay("decode", rpc_core::fuzzing::decode);
}

#[test]
fn adversary_corpus() {
    replay("adversary", rpc_core::fuzzing::adversary);
}
