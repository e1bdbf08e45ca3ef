//! Eureka answers (`GET /apps/{APP}`, `GET /apps`, `GET /vips/{vip}`): the body parsed as
//! the client does (`serde_json::from_slice`), then read by the instancer's functions
//! (`app_names`, `instances_of_app`, `instances_of_apps`, `instance_from_json`).
//!
//! Properties: no panic; bounded allocation; every decoded instance is usable and
//! registrable again; round trip: the InstanceInfo the registrar would send for it
//! (`EurekaRegistrar::registration_body`) reads back with the same address, id, tags,
//! health and metadata (apart from `eureka.status` and `eureka.secure`, which describe
//! the server's view).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use sd_core::{Instance, Registration};
use sd_eureka::instancer::{app_names, instances_of_app, instances_of_apps};
use sd_eureka::{instance_from_json, Client, ClientConfig, EurekaRegistrar, Lease};
use sd_eureka::{META_SECURE, META_STATUS};

fn client() -> Client {
    static CLIENT: OnceLock<Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            Client::new(ClientConfig::new(["http://127.0.0.1:8761/eureka"])).expect("client")
        })
        .clone()
}

fn server_view_removed(i: &Instance) -> Vec<(String, String)> {
    i.meta()
        .iter()
        .filter(|(k, _)| *k != META_STATUS && *k != META_SECURE)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn check(i: Instance) {
    sdkit_fuzz::check_instance(&i);
    let r = Registration::new("svc", i.clone());
    let registrar = EurekaRegistrar::new(client(), r, Lease::default(), None)
        .unwrap_or_else(|e| panic!("decoded {i:?} cannot be registered again: {e}"));
    let body = registrar.registration_body();
    let back = instance_from_json(&body)
        .unwrap_or_else(|e| panic!("our InstanceInfo {body} does not read back: {e}"));
    assert_eq!(back.addr(), i.addr());
    assert_eq!(back.id(), i.id());
    assert_eq!(back.tags(), i.tags());
    assert_eq!(back.health(), i.health());
    assert_eq!(server_view_removed(&back), server_view_removed(&i));
}

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let _ = app_names(&doc);
    for entries in [instances_of_app(&doc), instances_of_apps(&doc)] {
        for entry in entries.into_iter().flatten() {
            if let Ok(i) = instance_from_json(entry) {
                check(i);
            }
        }
    }
    // A bare InstanceInfo, as inside `{"instance": ...}`.
    if let Ok(i) = instance_from_json(&doc) {
        check(i);
    }
});
