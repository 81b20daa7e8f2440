//! Injected failures (`POST /_emulator/faults`), in the spirit of Microsoft's Dev Proxy.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One rule; the first matching rule fires.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultRule {
    /// Assigned on creation.
    #[serde(default)]
    pub(crate) id: u64,
    /// Requests whose path starts with this (case-insensitive).
    pub(crate) path_prefix: String,
    /// ... and ending with this (e.g. `/send`), when set.
    #[serde(default)]
    pub(crate) path_suffix: Option<String>,
    /// Only this method, when set.
    #[serde(default)]
    pub(crate) method: Option<String>,
    /// Answer with this status.
    #[serde(default)]
    pub(crate) status: Option<u16>,
    /// `Retry-After` header value, sent verbatim (number or string).
    #[serde(default)]
    pub(crate) retry_after: Option<serde_json::Value>,
    /// `Retry-After` value sent exactly as given, even when it is no valid value
    /// (`"NaN"`, `"-1"`, `"99999999999999999999"`); wins over `retry_after`.
    #[serde(default)]
    pub(crate) retry_after_raw: Option<String>,
    /// Wait this long first (then answer normally unless another effect is set).
    #[serde(default)]
    pub(crate) delay_ms: Option<u64>,
    /// Handle the request normally, then wait this long before answering (the work is done,
    /// the client does not know yet: for crash-between-steps tests).
    #[serde(default)]
    pub(crate) delay_after_ms: Option<u64>,
    /// Drop the connection without an answer.
    #[serde(default)]
    pub(crate) reset: bool,
    /// Answer 200 with a body that is not valid JSON.
    #[serde(default)]
    pub(crate) malformed: bool,
    /// Fire this many times, then disappear.
    #[serde(default)]
    pub(crate) times: Option<u64>,
    /// Probability of firing per matching request (0.0–1.0).
    #[serde(default)]
    pub(crate) rate: Option<f64>,
    /// Graph error code for the envelope (default derived from the status).
    #[serde(default)]
    pub(crate) code: Option<String>,
    /// Identity endpoints: answer with this AADSTS error.
    #[serde(default)]
    pub(crate) aadsts: Option<u32>,
    /// Identity endpoints: answer with this OAuth `error` (e.g. `temporarily_unavailable`).
    #[serde(default)]
    pub(crate) oauth_error: Option<String>,
}

/// What a fired rule asks for.
#[derive(Debug, Clone)]
pub(crate) struct Fired {
    /// The rule (a copy).
    pub(crate) rule: FaultRule,
}

impl Fired {
    /// True when the rule answers instead of the real handler.
    pub(crate) fn answers(&self) -> bool {
        let r = &self.rule;
        r.reset || r.malformed || r.status.is_some() || r.aadsts.is_some() || r.oauth_error.is_some()
    }

    /// The `Retry-After` header value, if any.
    pub(crate) fn retry_after(&self) -> Option<String> {
        if let Some(raw) = &self.rule.retry_after_raw {
            return Some(raw.clone());
        }
        self.rule.retry_after.as_ref().map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    }
}

/// The rule set.
#[derive(Default)]
pub(crate) struct Faults {
    /// Rules and the next id.
    rules: Mutex<(Vec<FaultRule>, u64)>,
}

impl Faults {
    /// Adds a rule; returns its id.
    pub(crate) fn add(&self, mut rule: FaultRule) -> Result<u64, String> {
        if let Some(rate) = rule.rate
            && !(0.0..=1.0).contains(&rate)
        {
            return Err("rate must be between 0.0 and 1.0".into());
        }
        if let Some(status) = rule.status
            && !(100..=599).contains(&status)
        {
            return Err(format!("status {status} is not an HTTP status"));
        }
        let mut guard = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        guard.1 += 1;
        rule.id = guard.1;
        guard.0.push(rule);
        Ok(guard.1)
    }

    /// Current rules.
    pub(crate) fn list(&self) -> Vec<FaultRule> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Removes every rule.
    pub(crate) fn clear(&self) {
        self.rules.lock().unwrap_or_else(|p| p.into_inner()).0.clear();
    }

    /// The rule that fires for this request, if any (consumes one of its `times`).
    pub(crate) fn take(&self, method: &str, path: &str) -> Option<Fired> {
        let mut guard = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let path = path.to_ascii_lowercase();
        let index = guard.0.iter().position(|r| {
            path.starts_with(&r.path_prefix.to_ascii_lowercase())
                && r.path_suffix
                    .as_ref()
                    .is_none_or(|sfx| path.ends_with(&sfx.to_ascii_lowercase()))
                && r.method.as_ref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && r.rate.is_none_or(|rate| fastrand::f64() < rate)
        })?;
        let rule = guard.0[index].clone();
        if let Some(times) = guard.0[index].times.as_mut() {
            *times = times.saturating_sub(1);
            if *times == 0 {
                guard.0.remove(index);
            }
        }
        Some(Fired { rule })
    }
}
