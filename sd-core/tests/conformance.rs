//! The shared conformance suite (sd-testkit) against the embedded `memory://` registry.
//! Every behaviour is its own test: `memory::<behaviour>`.

use std::sync::Arc;

sd_testkit::conformance!(memory, || async {
    Some(sd_testkit::conformance::Target::new(Arc::new(
        sd_core::MemoryRegistry::new(),
    )))
});
