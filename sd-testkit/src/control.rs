//! Fault injection by running `scripts/registries <verb> <name>`.

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

use crate::Server;

/// Root of the repository (found from this crate's `CARGO_MANIFEST_DIR`).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest.join("..");
    root.canonicalize().unwrap_or(root)
}

/// Path of the `scripts/registries` control script.
pub fn script_path() -> PathBuf {
    repo_root().join("scripts").join("registries")
}

/// Runtime directory of `scripts/registries` for the servers this checkout starts (pid
/// files, logs, data): `SD_REGISTRIES_DIR` if set, else `<repo>/target/registries`. The
/// machine-wide part (locks, owner records) is in [`machine_dir`].
pub fn registries_dir() -> PathBuf {
    match std::env::var_os("SD_REGISTRIES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target").join("registries"),
    }
}

/// The per-user, machine-wide directory that `scripts/registries` shares between checkouts
/// (the servers' ports are fixed, so there is one server of each kind per machine):
/// `<SD_CACHE_DIR>/run`, by default `$HOME/.cache/sd-registries/run`. It holds the lock of
/// the script's state-changing commands, the owner record of each server (which runtime dir
/// started it) and the test locks of [`exclusive`](crate::exclusive) and
/// [`shared`](crate::shared). Without `SD_CACHE_DIR` and `HOME`, [`registries_dir`].
pub fn machine_dir() -> PathBuf {
    let cache = match std::env::var_os("SD_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => match std::env::var_os("HOME") {
            Some(home) if !home.is_empty() => {
                PathBuf::from(home).join(".cache").join("sd-registries")
            }
            _ => return registries_dir(),
        },
    };
    cache.join("run")
}

/// A `scripts/registries` invocation that failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The script could not be started at all.
    #[error("could not run {script}: {source}")]
    Spawn {
        /// The script path that was run.
        script: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The script ran and reported failure.
    #[error("`scripts/registries {verb} {server}` failed ({status}): {stderr}")]
    Failed {
        /// The verb, e.g. `restart`.
        verb: &'static str,
        /// The server (or cluster member, or cluster) it was applied to.
        server: String,
        /// The script's exit status.
        status: ExitStatus,
        /// The script's standard error (it names the log file to look at).
        stderr: String,
    },
}

/// The verbs of `scripts/registries` used here.
#[derive(Clone, Copy)]
pub(crate) enum Verb {
    Kill,
    Pause,
    Resume,
    Restart,
    Reset,
    Wait,
    Heal,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Verb::Kill => "kill",
            Verb::Pause => "pause",
            Verb::Resume => "resume",
            Verb::Restart => "restart",
            Verb::Reset => "reset",
            Verb::Wait => "wait",
            Verb::Heal => "heal",
        }
    }
}

fn command(verb: Verb, server: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script_path())
        .arg(verb.as_str())
        .arg(server)
        .current_dir(repo_root())
        .stdin(Stdio::null());
    cmd
}

fn finish(
    verb: Verb,
    server: &str,
    output: std::io::Result<std::process::Output>,
) -> Result<(), ControlError> {
    let output = output.map_err(|source| ControlError::Spawn {
        script: script_path(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // Pass the script's progress messages through to the (captured) test output.
    eprint!("{stderr}");
    if output.status.success() {
        Ok(())
    } else {
        Err(ControlError::Failed {
            verb: verb.as_str(),
            server: server.to_string(),
            status: output.status,
            stderr: stderr.trim().to_string(),
        })
    }
}

pub(crate) async fn run(verb: Verb, server: &str) -> Result<(), ControlError> {
    let output = tokio::process::Command::from(command(verb, server))
        .output()
        .await;
    finish(verb, server, output)
}

/// Runs `scripts/registries <args>` and returns what it printed on stdout.
pub(crate) async fn run_output(args: &[&str]) -> Result<String, ControlError> {
    let mut cmd = std::process::Command::new("bash");
    cmd.arg(script_path())
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null());
    let output = tokio::process::Command::from(cmd)
        .output()
        .await
        .map_err(|source| ControlError::Spawn {
            script: script_path(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ControlError::Failed {
            verb: "run",
            server: args.join(" "),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

pub(crate) fn run_blocking(verb: Verb, server: &str) -> Result<(), ControlError> {
    finish(verb, server, command(verb, server).output())
}

pub(crate) fn heal_blocking(server: &str) -> Result<(), ControlError> {
    run_blocking(Verb::Heal, server)
}

/// Kills `server` with SIGKILL (a crash: no clean shutdown). Bring it back with [`restart`].
///
/// Hold [`exclusive`](crate::exclusive) while doing this.
pub async fn kill(server: Server) -> Result<(), ControlError> {
    run(Verb::Kill, server.name()).await
}

/// Freezes `server` with SIGSTOP: its sockets stay open but it answers nothing, like a
/// hung process or a network partition. Prefer [`PauseGuard::pause`], which resumes on drop.
///
/// Hold [`exclusive`](crate::exclusive) while doing this.
pub async fn pause(server: Server) -> Result<(), ControlError> {
    run(Verb::Pause, server.name()).await
}

/// Resumes a server frozen by [`pause`] (SIGCONT). Use [`wait_ready`] to wait until it
/// answers again.
pub async fn resume(server: Server) -> Result<(), ControlError> {
    run(Verb::Resume, server.name()).await
}

/// Stops `server` (SIGTERM, SIGKILL after 15 s) and starts it again on the same ports,
/// returning once it is ready. etcd and ZooKeeper keep their data across a restart;
/// Consul (`-dev`) and Eureka start empty and the DNS zone is reset to its seed records.
///
/// Hold [`exclusive`](crate::exclusive) while doing this.
pub async fn restart(server: Server) -> Result<(), ControlError> {
    run(Verb::Restart, server.name()).await
}

/// Like [`restart`], but the server comes back **without its data** (`scripts/registries
/// reset`): etcd and ZooKeeper start empty, as after losing their disk. Consul (`-dev`),
/// Eureka and DNS start empty or seeded on every restart anyway.
///
/// Hold [`exclusive`](crate::exclusive) while doing this.
pub async fn restart_empty(server: Server) -> Result<(), ControlError> {
    run(Verb::Reset, server.name()).await
}

/// Waits until `server` answers its readiness probe (bounded by the script's
/// `SD_REGISTRIES_TIMEOUT`, 120 s by default). Fails at once if the process is dead.
pub async fn wait_ready(server: Server) -> Result<(), ControlError> {
    run(Verb::Wait, server.name()).await
}

/// A paused server that is resumed when this guard is dropped, so a failing (panicking)
/// test never leaves a server frozen for everyone else.
///
/// ```no_run
/// # async fn demo() -> Result<(), sd_testkit::ControlError> {
/// use sd_testkit::{exclusive, PauseGuard, Server};
/// let _lock = exclusive(Server::Etcd);
/// let paused = PauseGuard::pause(Server::Etcd).await?;
/// // ... the server does not answer here ...
/// paused.resume().await?; // or just drop it
/// sd_testkit::wait_ready(Server::Etcd).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "the server is resumed as soon as the guard is dropped"]
pub struct PauseGuard {
    server: Server,
    paused: bool,
}

impl PauseGuard {
    /// Pauses `server` (SIGSTOP) and returns the guard that resumes it.
    pub async fn pause(server: Server) -> Result<PauseGuard, ControlError> {
        pause(server).await?;
        Ok(PauseGuard {
            server,
            paused: true,
        })
    }

    /// The paused server.
    pub fn server(&self) -> Server {
        self.server
    }

    /// Resumes the server now (SIGCONT) and reports errors, instead of on drop.
    pub async fn resume(mut self) -> Result<(), ControlError> {
        self.paused = false;
        resume(self.server).await
    }
}

impl Drop for PauseGuard {
    /// Resumes the server with a short blocking call if [`PauseGuard::resume`] was not used.
    fn drop(&mut self) {
        if self.paused {
            if let Err(e) = run_blocking(Verb::Resume, self.server.name()) {
                eprintln!("sd-testkit: could not resume {} on drop: {e}", self.server);
            }
        }
    }
}
