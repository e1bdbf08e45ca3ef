//! etcd values (sdkit's JSON instance, go-kit's plain `host:port` or URL), decoded by
//! `sd_etcdv3::decode_value`, the instancer's decoder.
//!
//! Properties: no panic; bounded allocation; every decoded instance is usable and
//! registrable again; round trip: what the registrar writes for it (JSON, through the
//! registrar's own encoder) decodes to the same instance, and its plain form to the same
//! address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_core::Registration;
use sd_etcdv3::fuzzing::{decode_value, encode_value};
use sd_etcdv3::ValueFormat;

/// go-kit's plain form of the instance's address reads back as the same host and port.
fn plain_form_reads_back(i: &sd_core::Instance) {
    let back = sd_core::Instance::parse(i.addr())
        .unwrap_or_else(|e| panic!("the address of {i:?} does not parse back: {e}"));
    assert_eq!((back.host(), back.port()), (i.host(), i.port()), "{i:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(i) = decode_value("key-id", data) else {
        return;
    };
    assert!(!i.host().is_empty(), "instance without a host: {i:?}");
    assert_ne!(i.port(), 0, "instance with port 0: {i:?}");
    plain_form_reads_back(&i);
    let r = Registration::new("svc", i.clone());
    r.validate()
        .unwrap_or_else(|e| panic!("decoded {i:?} is not registrable: {e}"));
    let id = r.instance_id();
    let json = encode_value(&r, &id, ValueFormat::Json);
    let back = decode_value("other-key", &json).unwrap_or_else(|e| {
        panic!(
            "our JSON {:?} does not decode: {e}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(back, i, "JSON round trip changed the instance");
    let plain = encode_value(&r, &id, ValueFormat::Plain);
    let back = decode_value(&id, &plain).unwrap_or_else(|e| {
        panic!(
            "our plain value {:?} does not decode: {e}",
            String::from_utf8_lossy(&plain)
        )
    });
    assert_eq!(
        back.addr(),
        i.addr(),
        "plain round trip changed the address"
    );
});
