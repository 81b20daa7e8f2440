//! `inboxd bench compare OLD.json NEW.json`: what a change cost, figure by figure.
//!
//! Reports are paired by scenario; every number both carry (nested objects flattened with
//! dots) is printed with its ratio new/old. Whether higher is better depends on the figure
//! (messages per second up, CPU seconds down), so the table shows ratios and leaves the
//! verdict to the reader; the budgets each report checked are in the reports themselves.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// One figure in both reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Scenario the figure belongs to.
    pub scenario: String,
    /// Field path, dotted.
    pub field: String,
    /// Old value.
    pub old: f64,
    /// New value.
    pub new: f64,
}

impl Row {
    /// new / old; `None` when old is 0 (no ratio exists).
    pub fn ratio(&self) -> Option<f64> {
        (self.old != 0.0).then(|| self.new / self.old)
    }
}

/// Fields that are not measurements of the daemon.
const SKIPPED: &[&str] = &["budget", "machine", "command", "problems", "smoke"];

/// Reads both files and prints the table to stdout.
pub fn run(old: &Path, new: &Path) -> anyhow::Result<()> {
    let read = |p: &Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{} is not a JSON report", p.display()))
    };
    let rows = rows(&read(old)?, &read(new)?)?;
    print!("{}", table(&rows));
    Ok(())
}

/// Every figure present in both reports, scenario by scenario, in the new report's order.
pub fn rows(old: &Value, new: &Value) -> anyhow::Result<Vec<Row>> {
    let old_reports = scenarios(old)?;
    let new_reports = scenarios(new)?;
    let mut rows = Vec::new();
    for (scenario, new_report) in &new_reports {
        let Some((_, old_report)) = old_reports.iter().find(|(s, _)| s == scenario) else {
            continue;
        };
        let mut old_figures = Vec::new();
        flatten("", old_report, &mut old_figures);
        let mut new_figures = Vec::new();
        flatten("", new_report, &mut new_figures);
        for (field, new) in new_figures {
            if let Some((_, old)) = old_figures.iter().find(|(f, _)| *f == field) {
                rows.push(Row {
                    scenario: scenario.clone(),
                    field,
                    old: *old,
                    new,
                });
            }
        }
    }
    if rows.is_empty() {
        bail!("the two reports share no scenario with figures to compare");
    }
    Ok(rows)
}

/// The reports in a file: one report, or `{"reports": [...]}` as `bench all` writes.
fn scenarios(v: &Value) -> anyhow::Result<Vec<(String, &Value)>> {
    let list: Vec<&Value> = match v.get("reports").and_then(Value::as_array) {
        Some(reports) => reports.iter().collect(),
        None => vec![v],
    };
    list.into_iter()
        .map(|r| {
            let name = r
                .get("scenario")
                .and_then(Value::as_str)
                .context("a report without a 'scenario' field")?;
            Ok((name.to_string(), r))
        })
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, f64)>) {
    let Some(map) = v.as_object() else { return };
    for (key, value) in map {
        if prefix.is_empty() && SKIPPED.contains(&key.as_str()) {
            continue;
        }
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            Value::Number(n) => out.extend(n.as_f64().map(|x| (path, x))),
            Value::Object(_) => flatten(&path, value, out),
            _ => {}
        }
    }
}

/// Aligned text: scenario, field, old, new, new/old.
pub fn table(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.scenario.len() + r.field.len() + 1)
        .max()
        .unwrap_or(0);
    let mut out = format!("{:<width$}  {:>14}  {:>14}  {:>8}\n", "figure", "old", "new", "new/old");
    for r in rows {
        let ratio = r.ratio().map_or_else(|| "-".to_string(), |x| format!("{x:.3}"));
        let name = format!("{}.{}", r.scenario, r.field);
        out.push_str(&format!(
            "{name:<width$}  {:>14}  {:>14}  {ratio:>8}\n",
            figure(r.old),
            figure(r.new)
        ));
    }
    out
}

fn figure(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{x:.0}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pairs_scenarios_and_figures_and_gives_ratios() {
        let old = json!({"scenario": "all", "reports": [
            {"scenario": "backlog", "messages_per_s": 1000.0, "peak_rss_mb": 200, "requests": {"graph": 10},
             "budget": {"x": {"limit": 1}}, "command": "old"},
            {"scenario": "idle", "cpu_percent": 5.0},
        ]});
        let new = json!({"scenario": "backlog", "messages_per_s": 1500.0, "peak_rss_mb": 100,
                         "requests": {"graph": 10, "tokens": 1}, "budget": {"x": {"limit": 2}}});
        let rows = rows(&old, &new).unwrap();
        let by_field = |f: &str| rows.iter().find(|r| r.field == f).cloned();
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(by_field("messages_per_s").unwrap().ratio(), Some(1.5));
        assert_eq!(by_field("peak_rss_mb").unwrap().ratio(), Some(0.5));
        assert_eq!(by_field("requests.graph").unwrap().ratio(), Some(1.0));
        assert!(by_field("budget.x.limit").is_none(), "budgets are not figures");
        let text = table(&rows);
        assert!(text.contains("backlog.messages_per_s"), "{text}");
        assert!(text.contains("1.500"), "{text}");
    }

    #[test]
    fn reports_without_a_common_scenario_are_an_error() {
        let err = rows(
            &json!({"scenario": "idle", "a": 1}),
            &json!({"scenario": "backlog", "a": 1}),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no scenario"), "{err}");
        let err = rows(&json!({"a": 1}), &json!({"scenario": "backlog"})).unwrap_err();
        assert!(err.to_string().contains("'scenario'"), "{err}");
    }

    #[test]
    fn a_zero_old_figure_has_no_ratio() {
        let rows = rows(&json!({"scenario": "s", "a": 0}), &json!({"scenario": "s", "a": 3})).unwrap();
        assert_eq!(rows[0].ratio(), None);
        assert!(table(&rows).contains(" -\n"));
    }
}
