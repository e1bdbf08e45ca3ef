//! What every fuzz target checks of an instance a decoder accepted.

use sd_core::{Instance, Registration};

/// Panics unless `i` is usable and keeps its address: it has a host and a port other than
/// 0, it is a valid [`Registration`] (it can be registered again), and go-kit's plain form
/// of its address ([`Instance::addr`]) reads back as the same host and port.
pub fn check_instance(i: &Instance) {
    assert!(!i.host().is_empty(), "instance without a host: {i:?}");
    assert_ne!(i.port(), 0, "instance with port 0: {i:?}");
    Registration::new("svc", i.clone())
        .validate()
        .unwrap_or_else(|e| panic!("decoded {i:?} is not registrable: {e}"));
    let back = Instance::parse(i.addr())
        .unwrap_or_else(|e| panic!("the address of {i:?} does not parse back: {e}"));
    assert_eq!(
        (back.host(), back.port()),
        (i.host(), i.port()),
        "the plain form of {i:?} reads back as another address"
    );
}
