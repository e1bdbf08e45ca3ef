//! DNS responses to an SRV query, from the wire: parsed by hickory (as the resolver does),
//! walked from the question's name through CNAMEs as `Client::lookup_srv` does, the records
//! selected and turned into instances as `SrvSource` does
//! (`sd_dnssrv::fuzzing::srv_response`).
//!
//! Properties: no panic; bounded allocation; every instance is usable (a target, a port
//! other than 0) and registrable again; with all priorities there are at least as many
//! instances as with the lowest group only.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((lowest, skipped)) = sd_dnssrv::fuzzing::srv_response(data, false) else {
        return;
    };
    let (all, skipped_all) =
        sd_dnssrv::fuzzing::srv_response(data, true).expect("same response, same outcome");
    assert_eq!(skipped, skipped_all);
    assert!(all.len() >= lowest.len());
    for i in &all {
        sdkit_fuzz::check_instance(i);
    }
});
