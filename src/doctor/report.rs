//! The doctor's findings: one check per line with its fix, as text for people or JSON for
//! machines, and the verdict the exit code carries.

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Works.
    Ok,
    /// Works for now, but needs attention (a credential expiring soon).
    Warn,
    /// Does not work: inboxd will not work for this subject until it is fixed.
    Fail,
    /// Not checked (an earlier check failed, or the configuration turns it off).
    Skip,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Warn => "WARN",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "skip",
        }
    }
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `config`, `app`, `mailbox` or `sink`.
    pub area: &'static str,
    /// The app name, mailbox address, key path or sink type it is about.
    pub subject: String,
    /// What was checked (`token`, `permissions`, `read`, `write`, `consent`, …).
    pub check: &'static str,
    /// How it came out.
    pub outcome: Outcome,
    /// What was found, in words (Graph's or Entra's code and message when they gave one).
    pub detail: String,
    /// What to do about it; `None` when nothing needs doing.
    pub fix: Option<String>,
    /// The Entra error code behind a failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u32>,
    /// Graph's error code behind a failure, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub graph_code: Option<String>,
}

impl Check {
    fn new(
        area: &'static str,
        subject: impl Into<String>,
        check: &'static str,
        outcome: Outcome,
        detail: String,
    ) -> Check {
        Check {
            area,
            subject: subject.into(),
            check,
            outcome,
            detail,
            fix: None,
            aadsts: None,
            graph_code: None,
        }
    }

    /// A check that passed.
    pub fn ok(area: &'static str, subject: impl Into<String>, check: &'static str, detail: String) -> Check {
        Check::new(area, subject, check, Outcome::Ok, detail)
    }

    /// A check that passed with a warning.
    pub fn warn(area: &'static str, subject: impl Into<String>, check: &'static str, detail: String) -> Check {
        Check::new(area, subject, check, Outcome::Warn, detail)
    }

    /// A check that failed.
    pub fn fail(area: &'static str, subject: impl Into<String>, check: &'static str, detail: String) -> Check {
        Check::new(area, subject, check, Outcome::Fail, detail)
    }

    /// A check that was not run.
    pub fn skip(area: &'static str, subject: impl Into<String>, check: &'static str, detail: String) -> Check {
        Check::new(area, subject, check, Outcome::Skip, detail)
    }

    /// With what to do about it.
    pub fn fix(mut self, fix: impl Into<String>) -> Check {
        self.fix = Some(fix.into());
        self
    }

    /// With the Entra error code.
    pub fn aadsts(mut self, code: Option<u32>) -> Check {
        self.aadsts = code;
        self
    }

    /// With Graph's error code.
    pub fn graph_code(mut self, code: Option<String>) -> Check {
        self.graph_code = code;
        self
    }
}

/// Every finding, in the order checked.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The configuration file checked.
    pub config: String,
    /// The findings.
    pub checks: Vec<Check>,
    /// The configuration could not be loaded (nothing else was checked).
    #[serde(skip)]
    pub config_invalid: bool,
}

impl Report {
    /// An empty report for `config`.
    pub fn new(config: String) -> Report {
        Report {
            config,
            checks: Vec::new(),
            config_invalid: false,
        }
    }

    /// Adds a finding.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// Adds findings.
    pub fn extend(&mut self, checks: impl IntoIterator<Item = Check>) {
        self.checks.extend(checks);
    }

    /// How many checks came out `outcome`.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.checks.iter().filter(|c| c.outcome == outcome).count()
    }

    /// Everything needed works: no check failed.
    pub fn passed(&self) -> bool {
        !self.config_invalid && self.count(Outcome::Fail) == 0
    }

    /// The report for a terminal: one line per check, its fix indented below it.
    pub fn to_text(&self) -> String {
        let mut out = format!("inboxd doctor: {}\n", self.config);
        let width = self
            .checks
            .iter()
            .map(|c| c.area.len() + c.subject.len() + c.check.len() + 3)
            .max()
            .unwrap_or(0);
        for c in &self.checks {
            let what = format!("{} {}: {}", c.area, c.subject, c.check);
            out.push_str(&format!("{:<5} {what:<width$}  {}\n", c.outcome.label(), c.detail));
            if let Some(fix) = &c.fix {
                for (i, line) in fix.lines().enumerate() {
                    let lead = if i == 0 { "fix:" } else { "    " };
                    out.push_str(&format!("      {lead} {line}\n"));
                }
            }
        }
        let (fail, warn) = (self.count(Outcome::Fail), self.count(Outcome::Warn));
        out.push_str(&if self.passed() {
            format!("All needed checks passed ({warn} warning(s)).\n")
        } else {
            format!("{fail} check(s) failed, {warn} warning(s): inboxd will not work fully until they are fixed.\n")
        });
        out
    }

    /// The report for machines.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "config": self.config,
            "passed": self.passed(),
            "summary": {
                "ok": self.count(Outcome::Ok),
                "warn": self.count(Outcome::Warn),
                "fail": self.count(Outcome::Fail) + usize::from(self.config_invalid && self.checks.is_empty()),
                "skip": self.count(Outcome::Skip),
            },
            "checks": self.checks,
        })
    }
}
