//! ZooKeeper node data (sdkit's JSON payload, go-kit's plain `host:port` or URL), decoded
//! by `sd_zk::decode`, the instancer's decoder.
//!
//! Properties: no panic; bounded allocation; every decoded instance is usable and
//! registrable again; round trip: the registrar's payload for it (`sd_zk::registrar::payload`,
//! JSON and plain) decodes to the same instance (plain: the same address).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::Registration;
use sd_zk::registrar::payload;
use sd_zk::Payload;

fuzz_target!(|data: &[u8]| {
    let Ok(i) = sd_zk::decode("node-1", data) else {
        return;
    };
    sdkit_fuzz::check_instance(&i);
    let r = Registration::new("svc", i.clone());
    let json = payload(&r, Payload::Json);
    let back = sd_zk::decode("other-node", &json).unwrap_or_else(|e| {
        panic!(
            "our JSON {:?} does not decode: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(back, i, "JSON round trip changed the instance");
    let plain = payload(&r, Payload::Plain);
    let back = sd_zk::decode("n", &plain).unwrap_or_else(|e| {
        panic!(
            "our plain data {:?} does not decode: {e}",
            String::from_utf8_lossy(&plain)
        )
    });
    assert_eq!(
        back.addr(),
        i.addr(),
        "plain round trip changed the address"
    );
});
