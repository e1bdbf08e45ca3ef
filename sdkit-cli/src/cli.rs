//! The command line, declared with clap's derive API.

use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::failure::Failure;

/// Watch, list, register and pick service instances in any registry sdkit supports.
///
/// Every command takes the registry URL as its first argument (memory://, static://,
/// consul://, etcd://, zk://, eureka://, dns+srv://; see docs/URLS.md), or from the
/// SD_REGISTRY environment variable when the URL is left out.
#[derive(Debug, Parser)]
#[command(name = "sdkit", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,

    /// Print JSON for scripts (one object per line for `watch`) instead of text.
    #[arg(long, global = true)]
    pub json: bool,

    /// Colour the text output: auto (on a terminal, unless NO_COLOR is set), always or never.
    #[arg(long, global = true, value_enum, default_value_t = ColorWhen::Auto, value_name = "WHEN")]
    pub color: ColorWhen,

    /// How long to wait for the registry's first answer.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub timeout: Duration,

    /// Log what the backends do to stderr (-v: info, -vv: debug; RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// When to colour the text output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorWhen {
    /// On a terminal, unless NO_COLOR is set (CLICOLOR_FORCE forces it).
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Follow a service: one line per change (added, removed, changed instance, error,
    /// recovery) until Ctrl-C.
    #[command(override_usage = "sdkit watch [OPTIONS] [URL] <SERVICE>")]
    Watch {
        /// The registry URL (left out: SD_REGISTRY), then SERVICE.
        #[arg(value_name = "URL|SERVICE", required = true, num_args = 1..=2)]
        args: Vec<String>,
        /// Which instances.
        #[command(flatten)]
        filter: Filter,
    },
    /// Show the instances of a service as a table (or what the registry can do, without SERVICE).
    #[command(override_usage = "sdkit list [OPTIONS] [URL] [SERVICE]")]
    List {
        /// The registry URL (left out: SD_REGISTRY), then optionally SERVICE.
        #[arg(value_name = "URL|SERVICE", num_args = 0..=2)]
        args: Vec<String>,
        /// Which instances.
        #[command(flatten)]
        filter: Filter,
    },
    /// Register an instance and keep it registered until Ctrl-C or SIGTERM, then deregister it.
    #[command(override_usage = "sdkit register [OPTIONS] [URL] <SERVICE> <HOST:PORT>")]
    Register {
        /// The registry URL (left out: SD_REGISTRY), then SERVICE and HOST:PORT.
        #[arg(value_name = "URL|SERVICE|HOST:PORT", required = true, num_args = 2..=3)]
        args: Vec<String>,
        /// The instance id (default: SERVICE-HOST-PORT).
        #[arg(long)]
        id: Option<String>,
        /// A tag; repeat for more.
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
        /// Metadata as key=value; repeat for more.
        #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        /// The weight weighted balancers use.
        #[arg(long)]
        weight: Option<u32>,
        /// The TTL of the registration: the registry drops it this long after this process
        /// stops heartbeating (killed without deregistering). At least 1s.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
        ttl: Duration,
    },
    /// Show which instances a balancer of sd-lb would pick, and the distribution.
    #[command(override_usage = "sdkit pick [OPTIONS] [URL] <SERVICE>")]
    Pick {
        /// The registry URL (left out: SD_REGISTRY), then SERVICE.
        #[arg(value_name = "URL|SERVICE", required = true, num_args = 1..=2)]
        args: Vec<String>,
        /// The balancer.
        #[arg(short, long, value_enum, default_value_t = BalancerKind::Rr)]
        balancer: BalancerKind,
        /// The request key for `--balancer hash`; `{}` in it is replaced by the pick number
        /// (0, 1, ...), to see how many keys spread.
        #[arg(long)]
        key: Option<String>,
        /// How many picks.
        #[arg(short = 'n', long = "picks", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
        n: u32,
        /// Seed for `random` and `p2c`, for a repeatable sequence.
        #[arg(long)]
        seed: Option<u64>,
        /// Which instances.
        #[command(flatten)]
        filter: Filter,
    },
}

/// The instance filters of a query.
#[derive(Debug, Args, Clone)]
pub struct Filter {
    /// Only instances carrying this tag; repeat to require several.
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Only instances whose health is passing.
    #[arg(long)]
    pub passing: bool,
}

impl Filter {
    /// The query for `service`.
    pub fn query(&self, service: &str) -> sdkit::ServiceQuery {
        let mut q = sdkit::ServiceQuery::new(service).passing_only(self.passing);
        for t in &self.tags {
            q = q.tag(t);
        }
        q
    }
}

/// The balancers `pick` can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BalancerKind {
    /// Round robin (sd_lb::RoundRobin).
    #[value(alias = "round-robin")]
    Rr,
    /// Uniformly at random (sd_lb::Random).
    Random,
    /// Smooth weighted round robin over instance weights (sd_lb::Weighted).
    Weighted,
    /// Power of two choices over requests in flight (sd_lb::P2c).
    P2c,
    /// Consistent hashing of --key (sd_lb::ConsistentHash, Maglev).
    Hash,
}

impl BalancerKind {
    /// The name shown in the output.
    pub fn name(self) -> &'static str {
        match self {
            BalancerKind::Rr => "rr",
            BalancerKind::Random => "random",
            BalancerKind::Weighted => "weighted",
            BalancerKind::P2c => "p2c",
            BalancerKind::Hash => "hash",
        }
    }
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// The registry URL and the remaining positional arguments.
#[derive(Debug)]
pub struct Target {
    /// The registry URL.
    pub url: String,
    /// The other positional arguments, in order.
    pub rest: Vec<String>,
}

/// Splits `args` into the registry URL and the rest: the first argument is the URL when it
/// has a scheme (`://`); otherwise the URL comes from `SD_REGISTRY` (`env`). `shape` names the
/// arguments after the URL, for messages; `min..=max` of them are expected.
pub fn target(
    args: Vec<String>,
    env: Option<String>,
    command: &str,
    shape: &str,
    min: usize,
    max: usize,
) -> Result<Target, Failure> {
    let mut args = args;
    let url = if args.first().is_some_and(|a| a.contains("://")) {
        args.remove(0)
    } else {
        match env.filter(|u| !u.trim().is_empty()) {
            Some(url) => url,
            None => {
                return Err(Failure::usage(format!(
                    "no registry URL: give one (sdkit {command} URL {shape}) or set {}",
                    sdkit::ENV_VAR
                )))
            }
        }
    };
    if let Some(a) = args.iter().find(|a| a.contains("://")) {
        return Err(Failure::usage(format!(
            "{:?} looks like a registry URL; the URL goes first: sdkit {command} URL {shape}",
            crate::failure::mask_urls(a)
        )));
    }
    if args.len() < min || args.len() > max {
        return Err(Failure::usage(format!(
            "sdkit {command} takes [URL] {shape}, got {} argument(s) after the URL",
            args.len()
        )));
    }
    Ok(Target { url, rest: args })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn url_first_or_from_the_environment() {
        let t = target(v(&["consul://h:1", "web"]), None, "watch", "SERVICE", 1, 1).unwrap();
        assert_eq!((t.url.as_str(), t.rest), ("consul://h:1", v(&["web"])));
        let t = target(
            v(&["web"]),
            Some("etcd://e:2".into()),
            "watch",
            "SERVICE",
            1,
            1,
        )
        .unwrap();
        assert_eq!((t.url.as_str(), t.rest), ("etcd://e:2", v(&["web"])));
        let t = target(
            v(&["zk://z:3"]),
            Some("etcd://e".into()),
            "list",
            "[SERVICE]",
            0,
            1,
        );
        assert_eq!(t.unwrap().rest, Vec::<String>::new());
    }

    #[test]
    fn missing_url_and_wrong_counts_say_what_to_do() {
        let e = target(v(&["web"]), None, "watch", "SERVICE", 1, 1).unwrap_err();
        assert!(e.to_string().contains("set SD_REGISTRY"), "{e}");
        let e = target(v(&["web"]), Some(" ".into()), "watch", "SERVICE", 1, 1).unwrap_err();
        assert!(e.to_string().contains("no registry URL"), "{e}");
        let e = target(v(&["memory://", "a", "b"]), None, "watch", "SERVICE", 1, 1).unwrap_err();
        assert!(e.to_string().contains("got 2 argument(s)"), "{e}");
        let e = target(
            v(&["web", "consul://h"]),
            Some("x://".into()),
            "watch",
            "SERVICE",
            1,
            1,
        );
        assert!(e.unwrap_err().to_string().contains("the URL goes first"));
    }

    #[test]
    fn meta_needs_a_key_and_an_equals_sign() {
        assert_eq!(parse_meta("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_meta("a=").unwrap(), ("a".into(), String::new()));
        assert!(parse_meta("ab").is_err());
        assert!(parse_meta("=b").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
