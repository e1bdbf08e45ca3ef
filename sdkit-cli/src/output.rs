//! What every command prints: instances as text and JSON, styles, timestamps, tables.

use std::io::Write;
use std::time::SystemTime;

use anstyle::{AnsiColor, Style};
use comfy_table::{presets, Table};
use sdkit::Instance;
use serde_json::{json, Value};

/// Style of added instances and recoveries.
pub const GREEN: Style = AnsiColor::Green.on_default();
/// Style of removed instances and errors.
pub const RED: Style = AnsiColor::Red.on_default();
/// Style of changed instances.
pub const YELLOW: Style = AnsiColor::Yellow.on_default();
/// Style of timestamps and secondary text.
pub const DIM: Style = Style::new().dimmed();
/// Style of headings.
pub const BOLD: Style = Style::new().bold();

/// Now, as RFC 3339 UTC with milliseconds: `2026-12-02T02:10:00.123Z`.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// An instance as JSON: `{"id", "address", "host", "port", "health", "weight", "tags", "meta"}`.
pub fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id(),
        "address": i.addr(),
        "host": i.host(),
        "port": i.port(),
        "health": i.health().as_str(),
        "weight": i.weight(),
        "tags": i.tags(),
        "meta": i.meta(),
    })
}

/// An instance on one line: `127.0.0.1:8080 id=web-1 health=passing weight=1 tags=a,b meta=k=v`.
/// Empty fields are left out; the id is left out when the registry has none.
pub fn instance_text(i: &Instance) -> String {
    let mut s = i.addr().to_string();
    if !i.id().is_empty() {
        s.push_str(&format!(" id={}", i.id()));
    }
    s.push_str(&format!(
        " health={} weight={}",
        i.health().as_str(),
        i.weight()
    ));
    if !i.tags().is_empty() {
        s.push_str(&format!(" tags={}", i.tags().join(",")));
    }
    if !i.meta().is_empty() {
        s.push_str(&format!(" meta={}", meta_text(i)));
    }
    s
}

/// Metadata as `k=v,k=v`.
pub fn meta_text(i: &Instance) -> String {
    i.meta()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A table of aligned columns without borders, like `kubectl get` (it reads the same on a
/// terminal, in a pipe and in a log, and `awk` can take it apart).
pub fn table(header: Vec<&str>) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING);
    t.set_header(header);
    t
}

/// The table as text, without the padding at the end of its lines.
pub fn table_text(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes `value` as one line of JSON to stdout.
pub fn print_json(value: &Value) -> std::io::Result<()> {
    let mut out = anstream::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()
}

/// `text` in `style` (the style is removed again when stdout does not take colour).
pub fn styled(style: Style, text: impl std::fmt::Display) -> String {
    format!("{style}{text}{style:#}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdkit::Health;

    #[test]
    fn an_instance_on_one_line_and_as_json() {
        let i = Instance::builder("10.0.0.1", 80)
            .id("web-1")
            .tag("a")
            .tag("b")
            .meta("zone", "eu")
            .weight(3)
            .health(Health::Warning)
            .build();
        assert_eq!(
            instance_text(&i),
            "10.0.0.1:80 id=web-1 health=warning weight=3 tags=a,b meta=zone=eu"
        );
        let j = instance_json(&i);
        assert_eq!(j["address"], "10.0.0.1:80");
        assert_eq!(j["port"], 80);
        assert_eq!(j["health"], "warning");
        assert_eq!(j["tags"], json!(["a", "b"]));
        assert_eq!(j["meta"]["zone"], "eu");
        assert_eq!(
            instance_text(&Instance::new("h", 1)),
            "h:1 health=passing weight=1"
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = timestamp();
        assert!(t.ends_with('Z') && t.contains('T') && t.len() == 24, "{t}");
    }
}
