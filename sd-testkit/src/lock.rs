//! Cross-process exclusion for fault tests.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;

use fs2::FileExt;

use crate::control::{heal_blocking, machine_dir, registries_dir};
use crate::Server;

/// Holds the exclusive fault-test lock for one server; released on drop.
///
/// On drop the guard also runs `scripts/registries heal <name>`: a server left paused
/// is resumed and one left dead is restarted, so a failing fault test does not break
/// the shared server for the tests that follow. Then the lock is released.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ExclusiveGuard {
    server: Server,
    _files: Vec<File>,
}

impl ExclusiveGuard {
    /// The locked server.
    pub fn server(&self) -> Server {
        self.server
    }
}

impl Drop for ExclusiveGuard {
    fn drop(&mut self) {
        if let Err(e) = heal_blocking(self.server.name()) {
            eprintln!(
                "sd-testkit: could not heal {} after a fault test: {e}",
                self.server
            );
        }
        // `_files` are closed after this, which releases the flocks.
    }
}

/// Holds a shared (reader) lock on a server; see [`shared`]. Released on drop.
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct SharedGuard {
    server: Server,
    _files: Vec<File>,
}

impl SharedGuard {
    /// The locked server.
    pub fn server(&self) -> Server {
        self.server
    }
}

/// Path of the lock file for `server`: `<machine dir>/locks/<name>.lock`, machine-wide
/// because the server is (every checkout uses the one on the fixed port).
#[cfg(test)]
fn lock_path(server: Server) -> PathBuf {
    lock_path_named(server.name())
}

fn lock_path_named(name: &str) -> PathBuf {
    machine_dir().join("locks").join(format!("{name}.lock"))
}

/// The lock files taken, in this order: the machine-wide one, then (if it is another file)
/// `<registries dir>/locks/<name>.lock`, where sd-testkit before the machine-wide locks took
/// it, so that checkouts not updated yet sharing one `SD_REGISTRIES_DIR` still exclude and
/// are excluded. A fixed order, so two holders never wait for each other in a cycle.
fn lock_paths(server: &str) -> Vec<PathBuf> {
    let mut paths = vec![lock_path_named(server)];
    let legacy = registries_dir()
        .join("locks")
        .join(format!("{server}.lock"));
    if !paths.contains(&legacy) {
        paths.push(legacy);
    }
    paths
}

fn open_lock_file(path: &std::path::Path) -> File {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .unwrap_or_else(|e| panic!("cannot create lock directory {}: {e}", dir.display()));
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot open lock file {}: {e}", path.display()))
}

type LockFn = fn(&File) -> std::io::Result<()>;

/// Opens and locks every file of [`lock_paths`] in order, saying so when it has to wait.
pub(crate) fn lock_all(server: &str, exclusive: bool) -> Vec<File> {
    lock_paths(server)
        .into_iter()
        .map(|path| {
            let file = open_lock_file(&path);
            // Fully qualified: std's inherent `File::lock_shared` (Rust 1.89+) would shadow
            // fs2's.
            let (try_lock, lock): (LockFn, LockFn) = if exclusive {
                (FileExt::try_lock_exclusive, FileExt::lock_exclusive)
            } else {
                (FileExt::try_lock_shared, FileExt::lock_shared)
            };
            if try_lock(&file).is_err() {
                if exclusive {
                    eprintln!(
                        "sd-testkit: waiting for the exclusive lock on {server} ({})",
                        path.display()
                    );
                } else {
                    eprintln!(
                        "sd-testkit: waiting while a fault test holds {server} ({})",
                        path.display()
                    );
                }
                lock(&file).unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
            }
            file
        })
        .collect()
}

/// Takes the exclusive lock for fault tests on `server`, waiting (blocking the thread)
/// while another test — in this or any other process — holds it.
///
/// Fault tests (those that [`kill`](crate::kill), [`pause`](crate::pause) or
/// [`restart`](crate::restart) a shared server) must hold this for their whole duration,
/// so that two of them, possibly in different test binaries run by one `cargo test`,
/// never disturb the same server at the same time, even from two checkouts. It is an
/// advisory `flock(2)` on `<machine dir>/locks/<name>.lock` (see [`machine_dir`](crate::machine_dir):
/// `$HOME/.cache/sd-registries/run/locks/<name>.lock` by default).
///
/// Normal tests do not take this lock and are never blocked by it. A normal test that
/// happens to use the server while a fault test has it paused or dead will see errors;
/// such a test can opt in to [`shared`], which waits for fault tests to finish, or the
/// suite can run fault tests separately (`cargo test -- --skip fault_`, then
/// `cargo test fault_`).
///
/// # Panics
///
/// If the lock file cannot be created or locked.
pub fn exclusive(server: Server) -> ExclusiveGuard {
    ExclusiveGuard {
        server,
        _files: lock_all(server.name(), true),
    }
}

/// Opt-in for normal tests that must not observe injected faults: takes a shared lock
/// on `server`, waiting (blocking the thread) while a fault test holds [`exclusive`].
///
/// Any number of `shared` holders run concurrently; a fault test's [`exclusive`] waits
/// until they are all done, and they wait until the fault test has finished and healed
/// the server. Tests that take neither lock are never blocked.
///
/// # Panics
///
/// If the lock file cannot be created or locked.
pub fn shared(server: Server) -> SharedGuard {
    SharedGuard {
        server,
        _files: lock_all(server.name(), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn lock_path_is_per_server() {
        let a = lock_path(Server::Etcd);
        let b = lock_path(Server::Etcd35);
        assert_ne!(a, b);
        assert!(a.ends_with("locks/etcd.lock"));
        assert!(a.starts_with(machine_dir()));
        let all = lock_paths(Server::Etcd.name());
        assert_eq!(all[0], a, "the machine-wide lock first");
        assert!(all.len() <= 2 && all.iter().all(|p| p.ends_with("locks/etcd.lock")));
    }

    /// The flock excludes a second holder even inside one process (separate open file
    /// descriptions), which is what makes parallel test threads wait too.
    #[test]
    fn second_open_of_the_lock_file_is_excluded() {
        let dir = std::env::temp_dir().join(crate::unique_name("sd-testkit-lock"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.lock");
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let first = open();
        first.lock_exclusive().unwrap();
        let second = open();
        assert!(second.try_lock_exclusive().is_err());

        let (tx, rx) = mpsc::channel();
        let waiter = std::thread::spawn(move || {
            second.lock_exclusive().unwrap();
            tx.send(()).unwrap();
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(first);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        waiter.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shared_holders_coexist_and_exclude_a_writer() {
        let dir = std::env::temp_dir().join(crate::unique_name("sd-testkit-lock"));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("y.lock");
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .unwrap()
        };
        let (r1, r2, w) = (open(), open(), open());
        FileExt::try_lock_shared(&r1).unwrap();
        FileExt::try_lock_shared(&r2).unwrap();
        assert!(FileExt::try_lock_exclusive(&w).is_err());
        drop(r1);
        assert!(FileExt::try_lock_exclusive(&w).is_err());
        drop(r2);
        FileExt::try_lock_exclusive(&w).unwrap();
        let r3 = open();
        assert!(FileExt::try_lock_shared(&r3).is_err());
        drop((w, r3));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
