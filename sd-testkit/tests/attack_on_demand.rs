//! Issue 21: `require()` starts a missing server on demand. Run by hand, in a shell without
//! any `SD_TEST_*` variable (see the attack report for the shell experiments):
//!
//! ```sh
//! env -u SD_TEST_ZK SD_REGISTRIES_DIR=/tmp/attack-reg cargo test -p sd-testkit --test attack_on_demand
//! ```
//!
//! With the variable set (the shared servers) it only checks that the address answers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use sd_testkit::Server;

/// The address `require` returns really is a ZooKeeper that answers `ruok`.
#[test]
fn attack_on_demand_zk_really_answers() {
    let Some(addr) = sd_testkit::require(Server::Zk) else {
        return;
    };
    let mut s = TcpStream::connect(&addr).expect("connect to the address require() returned");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"ruok").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert_eq!(answer, "imok", "{addr}");
}

/// The same from a second test in the same process: the server is started once per process
/// (the second call must not run `scripts/registries up` again, and must agree).
#[test]
fn attack_on_demand_second_require_agrees() {
    let a = sd_testkit::require(Server::Zk);
    let b = sd_testkit::require(Server::Zk);
    assert_eq!(a, b);
}
