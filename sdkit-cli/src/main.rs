//! `sdkit`: look at service discovery the way an application sees it, in any registry sdkit
//! supports (memory://, static://, consul://, etcd://, zk://, eureka://, dns+srv://).
//!
//! ```text
//! sdkit watch    [URL] SERVICE [--tag T]... [--passing]
//! sdkit list     [URL] [SERVICE] [--tag T]... [--passing]
//! sdkit register [URL] SERVICE HOST:PORT [--id ID] [--tag T]... [--meta K=V]... [--weight W] [--ttl 10s]
//! sdkit pick     [URL] SERVICE [--balancer rr|random|weighted|p2c|hash] [--key K] [-n N] [--seed S]
//! ```
//!
//! The URL defaults to `SD_REGISTRY`. `--json` prints JSON for scripts. Errors are one line
//! on stderr: exit code 2 for bad arguments, URLs and options, 1 for failures at run time
//! (unreachable registry, unknown service, rejected registration). The manual is
//! `docs/CLI.md`.

mod cli;
mod ctx;
mod failure;
mod list;
mod output;
mod pick;
mod register;
mod shutdown;
mod watch;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;

use crate::cli::{Cli, ColorWhen, Command};
use crate::failure::Failure;

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("sdkit: internal error (please report it): {info}");
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(e),
    };
    match cli.color {
        ColorWhen::Auto => {}
        ColorWhen::Always => anstream::ColorChoice::Always.write_global(),
        ColorWhen::Never => anstream::ColorChoice::Never.write_global(),
    }
    logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::runtime(format!("cannot start the runtime: {e}"))),
    };
    let outcome = runtime.block_on(run(cli));
    // Background tasks of a backend that is still retrying must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(f) => fail(&f),
    }
}

fn fail(f: &Failure) -> ExitCode {
    if !f.is_quiet() {
        eprintln!("sdkit: {f}");
    }
    f.exit_code()
}

/// Help and version go to stdout with exit code 0; every other clap error becomes one line
/// (clap's first line, which names the bad argument) and exit code 2.
fn clap_error(e: clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(failure::USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("bad arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            // clap quotes the bad argument as typed: a URL there may carry a secret.
            let first = failure::mask_urls(first);
            fail(&Failure::usage(format!("{first} (see sdkit --help)")))
        }
    }
}

fn logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => EnvFilter::new(f),
        _ => match verbose {
            0 => return,
            1 => EnvFilter::new("info"),
            _ => EnvFilter::new("debug"),
        },
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn env_url() -> Option<String> {
    std::env::var(sdkit::ENV_VAR).ok()
}

/// Opens the registry, a bad URL being a usage error that names the bad part.
fn connect(url: &str) -> Result<std::sync::Arc<dyn sdkit::Registry>, Failure> {
    // The error names the URL (redacted) itself.
    sdkit::connect(url).map_err(|e| Failure::from_sd("bad registry URL", &e))
}

/// A warning on stderr for `memory://`, which no other process can see.
fn warn_memory(url: &str) {
    if url.trim_start().starts_with("memory:") {
        note(
            "memory:// is this process's own registry; other processes (your services, \
             another sdkit) cannot see it. Use static:// for a server-less demo.",
        );
    }
}

/// One `sdkit: note: ...` line on stderr.
pub fn note(message: &str) {
    eprintln!("sdkit: note: {message}");
}

/// Notes for filters the registry cannot apply as asked (from its capabilities).
fn filter_notes(registry: &dyn sdkit::Registry, filter: &cli::Filter) {
    let caps = registry.capabilities();
    let scheme = registry.scheme();
    if !filter.tags.is_empty() && !caps.tags {
        note(&format!(
            "{scheme}:// does not carry tags, so --tag cannot select instances \
             (static:// ignores it, dns+srv:// then matches none)"
        ));
    }
    if filter.passing && !caps.health {
        note(&format!(
            "{scheme}:// does not carry health: every instance it lists counts as passing"
        ));
    }
}

/// Splits the positional arguments, opens the registry and says what it cannot do.
fn context(
    cli: &Cli,
    args: Vec<String>,
    command: &str,
    shape: &str,
    counts: (usize, usize),
) -> Result<(ctx::Ctx, Vec<String>), Failure> {
    let t = cli::target(args, env_url(), command, shape, counts.0, counts.1)?;
    let registry = connect(&t.url)?;
    warn_memory(&t.url);
    let ctx = ctx::Ctx {
        registry,
        url: sdkit::config::redact(&t.url),
        json: cli.json,
        timeout: cli.timeout,
    };
    Ok((ctx, t.rest))
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Watch { args, filter } => {
            let (ctx, rest) = context(&cli, args.clone(), "watch", "SERVICE", (1, 1))?;
            filter_notes(ctx.registry.as_ref(), filter);
            watch::run(&ctx, filter.query(&rest[0])).await
        }
        Command::List { args, filter } => {
            let (ctx, rest) = context(&cli, args.clone(), "list", "[SERVICE]", (0, 1))?;
            match rest.first() {
                Some(service) => {
                    filter_notes(ctx.registry.as_ref(), filter);
                    list::instances(&ctx, filter.query(service)).await
                }
                None => list::services(&ctx).await,
            }
        }
        Command::Register {
            args,
            id,
            tags,
            meta,
            weight,
            ttl,
        } => {
            let (ctx, rest) = context(&cli, args.clone(), "register", "SERVICE HOST:PORT", (2, 2))?;
            let spec = register::Spec {
                service: rest[0].clone(),
                addr: rest[1].clone(),
                id: id.clone(),
                tags: tags.clone(),
                meta: meta.clone(),
                weight: *weight,
                ttl: *ttl,
            };
            register::run(&ctx, spec).await
        }
        Command::Pick {
            args,
            balancer,
            key,
            n,
            seed,
            filter,
        } => {
            let (ctx, rest) = context(&cli, args.clone(), "pick", "SERVICE", (1, 1))?;
            let (balancer, key, n, seed) = (*balancer, key.as_deref(), *n, *seed);
            // Check the options before asking the registry anything.
            pick::check_options(balancer, key, seed)?;
            filter_notes(ctx.registry.as_ref(), filter);
            let service = &rest[0];
            let set = list::current(&ctx, &filter.query(service)).await?;
            let picks = pick::simulate(&set, balancer, key, n, seed)?;
            pick::print(&set, service, balancer, key, n, &picks, ctx.json)
        }
    }
}
