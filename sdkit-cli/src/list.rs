//! `sdkit list`: the instances of a service as a table, or what a registry can do.

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
        styled(
            output::DIM,
            format!(
                "{} instance{} of {}",
                set.len(),
                if set.len() == 1 { "" } else { "s" },
                query.service
            )
        )
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The capabilities as `(name, declared, meaning)`.
fn capability_rows(c: Capabilities) -> [(&'static str, bool, &'static str); 8] {
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
    ]
}

/// The message for `list URL` without a service.
pub fn cannot_list(scheme: &str) -> String {
    format!(
        "{scheme}:// registries cannot list their services through sdkit: service listing is \
         not part of sdkit's Registry interface, because dns+srv:// and static:// registries \
         cannot enumerate names; name the service: sdkit list URL SERVICE"
    )
}

/// `list URL`: what the registry can do, then a clear failure: services cannot be listed.
pub fn capabilities(ctx: &Ctx) -> Result<ExitCode, Failure> {
    let scheme = ctx.registry.scheme();
    let rows = capability_rows(ctx.registry.capabilities());
    if ctx.json {
        let caps: serde_json::Map<String, Value> = rows
            .iter()
            .map(|(n, d, _)| (n.to_string(), json!(d)))
            .collect();
        output::print_json(&json!({
            "scheme": scheme,
            "capabilities": caps,
            "services": Value::Null,
            "services_error": cannot_list(scheme),
        }))?;
    } else {
        let mut table = output::table(vec!["CAPABILITY", "DECLARED", "MEANING"]);
        for (name, declared, meaning) in rows {
            // No colour inside cells: the table is laid out before anstream strips escapes.
            let yes = if declared { "yes" } else { "no" };
            table.add_row(vec![name, yes, meaning]);
        }
        let mut out = anstream::stdout().lock();
        writeln!(
            out,
            "{}",
            styled(output::BOLD, format!("{scheme}:// registry"))
        )?;
        writeln!(out, "{}", output::table_text(&table))?;
        out.flush()?;
    }
    Err(Failure::runtime(cannot_list(scheme)))
}
