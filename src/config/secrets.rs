//! Secret references: `env:NAME`, `file:PATH`, and `dev:VALUE` for development-only literals.
//! Error messages name the key, the variable or the file, never the secret itself.

use std::collections::HashMap;
use std::path::Path;

use secrecy::SecretString;

use super::reader::{Errors, Field};

/// Where secret references are resolved: the injected environment and the config's folder.
pub(super) struct Secrets<'e> {
    env: &'e HashMap<String, String>,
    base_dir: &'e Path,
}

impl<'e> Secrets<'e> {
    /// Resolves `env:` against `env` and relative `file:` paths against `base_dir`.
    pub(super) fn new(env: &'e HashMap<String, String>, base_dir: &'e Path) -> Secrets<'e> {
        Secrets { env, base_dir }
    }

    /// The secret a field refers to. A literal in the file is refused unless marked `dev:`;
    /// a value set by an `INBOXD__…` variable may be the secret itself, since it already
    /// lives in the environment rather than in the file.
    pub(super) fn resolve(&self, field: &Field<'_>, errors: &mut Errors) -> Option<SecretString> {
        let reference = field.text(errors, "a secret reference (env:NAME or file:PATH)")?;
        if let Some(name) = reference.strip_prefix("env:") {
            let name = name.trim();
            if name.is_empty() {
                field.fail(errors, "env: needs a variable name, e.g. env:INBOXD_API_TOKEN");
                return None;
            }
            return match self.env.get(name) {
                None => {
                    field.fail(errors, format!("environment variable {name} is not set"));
                    None
                }
                Some(value) if value.is_empty() => {
                    field.fail(errors, format!("environment variable {name} is empty"));
                    None
                }
                Some(value) => Some(SecretString::from(value.clone())),
            };
        }
        if let Some(path) = reference.strip_prefix("file:") {
            let path = path.trim();
            if path.is_empty() {
                field.fail(errors, "file: needs a path, e.g. file:/run/secrets/name");
                return None;
            }
            let full = self.base_dir.join(path);
            return match std::fs::read_to_string(&full) {
                Err(err) => {
                    field.fail(errors, format!("cannot read secret file {}: {err}", full.display()));
                    None
                }
                Ok(text) => {
                    // Files written by `echo` or editors end with a newline that is not part of the secret.
                    let text = text.trim_end_matches(['\r', '\n']);
                    if text.is_empty() {
                        field.fail(errors, format!("secret file {} is empty", full.display()));
                        return None;
                    }
                    Some(SecretString::from(text.to_string()))
                }
            };
        }
        if let Some(value) = reference.strip_prefix("dev:") {
            if value.is_empty() {
                field.fail(errors, "dev: needs a value after the marker");
                return None;
            }
            return Some(SecretString::from(value.to_string()));
        }
        if field.set_by_env() && !reference.is_empty() {
            return Some(SecretString::from(reference.to_string()));
        }
        field.fail(
            errors,
            "the secret is written as a literal, which is refused; refer to it as env:NAME or file:PATH \
             (a development-only literal must be marked dev:VALUE)",
        );
        None
    }
}
