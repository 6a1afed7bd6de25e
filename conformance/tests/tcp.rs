//! The conformance suite on tcp, every Connector in this process on its own loopback listener.

ferry_conformance::conformance_suite!(tcp, ferry_conformance::tcp::TcpHarness::new());
