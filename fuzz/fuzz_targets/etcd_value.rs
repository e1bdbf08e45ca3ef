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

fuzz_target!(|data: &[u8]| {
    let Ok(i) = decode_value("key-id", data) else {
        return;
    };
    sdkit_fuzz::check_instance(&i);
    let r = Registration::new("svc", i.clone());
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
