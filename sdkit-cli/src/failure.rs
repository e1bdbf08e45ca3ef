//! How a command fails: one line on stderr and an exit code.

use std::fmt;
use std::process::ExitCode;

/// Exit code of a usage or configuration error (clap's own code for bad arguments).
pub const USAGE: u8 = 2;
/// Exit code of a failure at run time: unreachable registry, unknown service, rejected
/// registration.
pub const RUNTIME: u8 = 1;

/// A failed command: what to print, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    /// A bad argument, URL or option: exit code 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: USAGE,
        }
    }

    /// A failure at run time: exit code 1.
    pub fn runtime(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            code: RUNTIME,
        }
    }

    /// `context: error`, with the exit code the kind of `error` calls for (configuration
    /// errors are usage errors).
    pub fn from_sd(context: impl fmt::Display, error: &sdkit::Error) -> Self {
        let message = format!("{context}: {error}");
        match error {
            sdkit::Error::Config(_) => Failure::usage(message),
            _ => Failure::runtime(message),
        }
    }

    /// The exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(self.code)
    }

    /// The numeric exit code.
    #[cfg(test)]
    pub fn code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One line, whatever the registry's message held.
        let mut first = true;
        for line in self.message.lines().filter(|l| !l.trim().is_empty()) {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(line.trim())?;
            first = false;
        }
        Ok(())
    }
}

impl Failure {
    /// Whether there is nothing to say: the reader of the output went away (`| head`), which
    /// ends the command quietly with exit code 0, as it ends `watch` on purpose.
    pub fn is_quiet(&self) -> bool {
        self.message.is_empty()
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            return Failure {
                message: String::new(),
                code: 0,
            };
        }
        Failure::runtime(format!("cannot write the output: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_and_the_right_code() {
        let f = Failure::runtime("consul: unavailable\n  connection refused\n");
        assert_eq!(f.to_string(), "consul: unavailable connection refused");
        assert_eq!(f.code(), RUNTIME);
        let f = Failure::from_sd("bad URL", &sdkit::Error::config("no host"));
        assert_eq!(f.code(), USAGE);
        assert_eq!(f.to_string(), "bad URL: invalid configuration: no host");
        let f = Failure::from_sd("watch", &sdkit::Error::unavailable("etcd", "down"));
        assert_eq!(f.code(), RUNTIME);
        let f = Failure::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(f.is_quiet() && f.code() == 0);
        let f = Failure::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!f.is_quiet() && f.code() == RUNTIME);
    }
}

/// `text` with every word that looks like a URL (holds `://`; words end at white space and
/// quotes) cut down to its scheme: `consul://…`. For messages quoting arguments the CLI
/// did not read as a URL (a second URL, a URL in the wrong place, clap's own errors): their
/// options were never parsed, so which ones are secret is unknown and none is shown.
pub fn mask_urls(text: &str) -> String {
    let is_boundary = |c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match word.find("://") {
            Some(i) => {
                let scheme = &word[..i];
                if sdkit::config::is_scheme(scheme) {
                    out.push_str(scheme);
                }
                out.push_str("://…");
            }
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        if is_boundary(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

#[cfg(test)]
mod mask_urls_tests {
    use super::mask_urls;

    #[test]
    fn urls_are_cut_to_their_scheme() {
        assert_eq!(
            mask_urls("unexpected argument 'consul://h:1?token=s3cret' found"),
            "unexpected argument 'consul://…' found"
        );
        assert_eq!(
            mask_urls("\"etcd://root:pw@h:1\" looks like a URL"),
            "\"etcd://…\" looks like a URL"
        );
        assert_eq!(mask_urls("u:pw@x://y and more"), "://… and more");
        assert_eq!(mask_urls("no url here"), "no url here");
    }
}
