//! What happens where io_uring cannot be used: a typed error, or plain sockets when the
//! configuration allows. Alone in its test binary: it forbids io_uring on the whole host for a
//! moment (`kernel.io_uring_disabled`, root only), as a kernel without it would.

mod common;

use common::{Book, LedgerClient, LedgerServer, client_config, localhost, park, server_config};
use rpc_transport::udp::{ConnectError, Io, UdpClient, UdpServer};
use rpc_transport::uring::{UringConfig, UringError};

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

/// Forbids io_uring until dropped (restoring the old setting, even if the test fails).
struct Forbidden(String);

impl Forbidden {
    fn new() -> Option<Self> {
        let old = std::fs::read_to_string(SYSCTL).ok()?;
        std::fs::write(SYSCTL, "2").ok()?;
        Some(Self(old))
    }
}

impl Drop for Forbidden {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, self.0.trim());
    }
}

#[test]
fn a_kernel_without_io_uring_gets_a_typed_error_or_plain_sockets() {
    // A configuration that cannot work is an error, fallback or not.
    let bad = Io::Uring(UringConfig::default().with_fallback().buffers(3));
    let e = UdpServer::bind(localhost(), server_config(park()).io(bad)).unwrap_err();
    assert!(
        matches!(
            e.get_ref().and_then(|e| e.downcast_ref::<UringError>()),
            Some(UringError::Config(_))
        ),
        "{e}"
    );

    let Some(_forbidden) = Forbidden::new() else {
        eprintln!("not root: the kernel-refusal half of this test needs {SYSCTL}");
        return;
    };
    // Without fallback: a typed error, saying what the kernel refused.
    let e = UdpServer::bind(
        localhost(),
        server_config(park()).io(Io::Uring(UringConfig::default())),
    )
    .unwrap_err();
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<UringError>());
    assert!(matches!(inner, Some(UringError::Unsupported { .. })), "{e}");
    // With fallback: plain sockets, serving as ever.
    let book = Book::default();
    let io = Io::Uring(UringConfig::default().with_fallback());
    let server = UdpServer::bind(localhost(), server_config(park()).io(io.clone()))
        .unwrap()
        .serve(LedgerServer::new(book.clone()))
        .unwrap();
    assert!(!server.uses_io_uring());
    let strict = UdpClient::connect(
        server.local_addr(),
        client_config(park()).io(Io::Uring(UringConfig::default())),
    );
    assert!(matches!(
        strict,
        Err(ConnectError::Uring(UringError::Unsupported { .. }))
    ));
    let client = LedgerClient::new(
        UdpClient::connect(server.local_addr(), client_config(park()).io(io)).unwrap(),
    );
    assert!(client.transport().link().uring().is_none());
    assert_eq!(client.record(1, 1).unwrap(), 1);
}
