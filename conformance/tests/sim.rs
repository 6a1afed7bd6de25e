//! The conformance suite on the simulator.

ferry_conformance::conformance_suite!(sim, ferry_conformance::sim::SimHarness::new());
