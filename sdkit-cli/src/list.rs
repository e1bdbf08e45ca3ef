//! `sdkit list`: the instances of a service as a table, or the services of a registry and
//! what it can do.

use sdkit::{Capabilities, InstanceSet, ServiceQuery};
use serde_json::{json, Value};
use std::io::Write;
use std::process::ExitCode;

use crate::ctx::Ctx;
use crate::failure::Failure;
use crate::output::{self, styled};

/// The current instances matching `query`: the instancer's first state. An error state, no
/// answer within `--timeout` and an empty set (unknown service) are failures.
pub async fn current(ctx: &Ctx, query: &ServiceQuery) -> Result<InstanceSet, Failure> {
    let opened = ctx.open(query).await?;
    opened.instancer.stop().await;
    if !opened.first.is_empty() {
        return Ok(opened.first);
    }
    let filtered = if query.tags.is_empty() && !query.passing_only {
        ""
    } else {
        " matching the --tag/--passing filters"
    };
    Err(Failure::runtime(format!(
        "no instances of {:?}{filtered} at {} (unknown service?)",
        query.service, ctx.url
    )))
}

/// The dimmed line under a table: `3 instances of web`, `1 service at consul://...`.
fn count_line(n: usize, noun: &str, preposition: &str, of: &str) -> String {
    let plural = if n == 1 { "" } else { "s" };
    styled(
        output::DIM,
        format!("{n} {noun}{plural} {preposition} {of}"),
    )
}

/// `list URL SERVICE`: the table (or a JSON array of instances).
pub async fn instances(ctx: &Ctx, query: ServiceQuery) -> Result<ExitCode, Failure> {
    let set = current(ctx, &query).await?;
    if ctx.json {
        let list: Vec<Value> = set.iter().map(output::instance_json).collect();
        output::print_json(&json!({"service": query.service, "instances": list}))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(vec!["ID", "ADDRESS", "HEALTH", "WEIGHT", "TAGS", "META"]);
    for i in set.iter() {
        table.add_row(vec![
            i.id().to_string(),
            i.addr().to_string(),
            i.health().as_str().to_string(),
            i.weight().to_string(),
            i.tags().join(","),
            output::meta_text(i),
        ]);
    }
    let mut out = anstream::stdout().lock();
    writeln!(out, "{}", output::table_text(&table))?;
    writeln!(
        out,
        "{}",
        count_line(set.len(), "instance", "of", &query.service)
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The capabilities as `(name, declared, meaning)`.
fn capability_rows(c: Capabilities) -> [(&'static str, bool, &'static str); 9] {
    [
        (
            "registration",
            c.registration,
            "instances can be registered",
        ),
        ("ids", c.ids, "the registered id is the id watchers see"),
        (
            "expiry",
            c.expiry,
            "a vanished registrant is removed on its own (TTL, lease, session)",
        ),
        (
            "tags",
            c.tags,
            "tags are stored, returned and filtered on (--tag)",
        ),
        (
            "metadata",
            c.metadata,
            "metadata is stored and returned (--meta)",
        ),
        (
            "weight",
            c.weight,
            "weights are stored and returned (--weight)",
        ),
        (
            "health",
            c.health,
            "health is carried, so --passing can leave instances out",
        ),
        (
            "server_side_filtering",
            c.server_side_filtering,
            "the registry filters by tag/health itself",
        ),
        (
            "list_services",
            c.list_services,
            "the registry can list its services (sdkit list URL)",
        ),
    ]
}

/// The services of the registry, or why it has none to show: `Ok(Err(message))` when the
/// backend cannot list (its capabilities say so, or it answers
/// [`Unsupported`](sdkit::Error::Unsupported)). Bounded by `--timeout`.
async fn fetch_services(ctx: &Ctx) -> Result<Result<Vec<String>, String>, Failure> {
    let scheme = ctx.registry.scheme();
    if !ctx.registry.capabilities().list_services {
        return Ok(Err(cannot_list(scheme)));
    }
    match tokio::time::timeout(ctx.timeout, ctx.registry.services()).await {
        Ok(Ok(names)) => Ok(Ok(names)),
        Ok(Err(sdkit::Error::Unsupported { .. })) => Ok(Err(cannot_list(scheme))),
        Ok(Err(e)) => Err(Failure::from_sd(
            format_args!("listing the services of {}", ctx.url),
            &e,
        )),
        Err(_) => Err(Failure::runtime(format!(
            "listing the services of {}: no answer within {:?} (--timeout)",
            ctx.url, ctx.timeout
        ))),
    }
}

/// The message for `list URL` without a service, where the registry cannot list.
pub fn cannot_list(scheme: &str) -> String {
    format!(
        "{scheme}:// registries cannot list their services (they cannot enumerate names; \
         the list_services capability); name the service: sdkit list URL SERVICE"
    )
}

/// `list URL`: the services where the registry can list them (a table, or `--json`), with
/// what the registry can do; where it cannot, the capabilities and then a clear failure.
pub async fn services(ctx: &Ctx) -> Result<ExitCode, Failure> {
    let scheme = ctx.registry.scheme();
    let listed = fetch_services(ctx).await?;
    let rows = capability_rows(ctx.registry.capabilities());
    if ctx.json {
        let caps: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(n, d, _)| (n.to_string(), json!(d)))
            .collect();
        let doc = match &listed {
            Ok(names) => json!({"scheme": scheme, "capabilities": caps, "services": names}),
            Err(why) => json!({
                "scheme": scheme,
                "capabilities": caps,
                "services": Value::Null,
                "services_error": why,
            }),
        };
        output::print_json(&doc)?;
    } else {
        let mut out = anstream::stdout().lock();
        if let Ok(names) = &listed {
            let mut table = output::table(vec!["SERVICE"]);
            for name in names {
                table.add_row(vec![name.as_str()]);
            }
            writeln!(out, "{}", output::table_text(&table))?;
            writeln!(
                out,
                "{}",
                count_line(names.len(), "service", "at", &ctx.url)
            )?;
            writeln!(out)?;
        }
        let mut table = output::table(vec!["CAPABILITY", "DECLARED", "MEANING"]);
        for (name, declared, meaning) in rows {
            // No colour inside cells: the table is laid out before anstream strips escapes.
            let yes = if declared { "yes" } else { "no" };
            table.add_row(vec![name, yes, meaning]);
        }
        writeln!(
            out,
            "{}",
            styled(output::BOLD, format!("{scheme}:// registry"))
        )?;
        writeln!(out, "{}", output::table_text(&table))?;
        out.flush()?;
    }
    match listed {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(why) => Err(Failure::runtime(why)),
    }
}
