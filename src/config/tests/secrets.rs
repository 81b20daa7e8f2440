//! Secret references, literals and app credentials.

use secrecy::ExposeSecret;

use super::{BASE, assert_has, assert_only, env, lines, load, ok};
use crate::config::*;

#[test]
fn a_literal_secret_is_refused_without_printing_it() {
    let toml = BASE.replace("env:CONTOSO_SECRET", "Sup3r-S3cret-Value");
    let errors = load(&format!("[store]\nencryption_key = \"k3y-L1teral\"\n{toml}"), &[]).unwrap_err();
    let text = format!("{errors}\n{errors:?}");
    assert!(!text.contains("Sup3r-S3cret-Value"), "secret leaked: {text}");
    assert!(!text.contains("k3y-L1teral"), "secret leaked: {text}");
    let lines: Vec<String> = errors.to_string().lines().map(str::to_string).collect();
    assert_has(&lines, "apps[0].client_secret", "written as a literal");
    assert_has(&lines, "store.encryption_key", "written as a literal");
}

#[test]
fn the_dev_marker_allows_a_literal_secret() {
    let config = ok(&BASE.replace("env:CONTOSO_SECRET", "dev:demo-secret"), &[]);
    assert!(matches!(&config.apps[0].credential, AppCredential::Secret(s) if s.expose_secret() == "demo-secret"));
}

#[test]
fn env_references_resolve_and_unset_variables_are_reported() {
    let config = ok(BASE, &[]);
    assert!(matches!(&config.apps[0].credential, AppCredential::Secret(s) if s.expose_secret() == "s3cret-from-env"));
    let toml = BASE.replace("env:CONTOSO_SECRET", "env:NOT_SET_ANYWHERE");
    assert_only(
        &toml,
        &[],
        "apps[0].client_secret",
        "environment variable NOT_SET_ANYWHERE is not set",
    );
}

#[test]
fn file_references_resolve_against_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "from-a-file\n").unwrap();
    let toml = BASE.replace("env:CONTOSO_SECRET", "file:secret.txt");
    let config = from_sources(&toml, &env(&[]), dir.path()).unwrap();
    assert!(matches!(&config.apps[0].credential, AppCredential::Secret(s) if s.expose_secret() == "from-a-file"));

    let toml = BASE.replace("env:CONTOSO_SECRET", "file:missing.txt");
    let errors = from_sources(&toml, &env(&[]), dir.path()).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "apps[0].client_secret");
    assert!(errors.0[0].message.contains("cannot read secret file") && errors.0[0].message.contains("missing.txt"));
}

#[test]
fn a_certificate_credential_is_the_pem_file() {
    let dir = tempfile::tempdir().unwrap();
    let pem = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("cert.pem"), pem).unwrap();
    std::fs::write(
        dir.path().join("key-only.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let toml = BASE.replace(
        "client_secret = \"env:CONTOSO_SECRET\"",
        "certificate = \"file:cert.pem\"",
    );
    let config = from_sources(&toml, &env(&[]), dir.path()).unwrap();
    assert!(
        matches!(&config.apps[0].credential, AppCredential::Certificate(p) if p.expose_secret().contains("BEGIN CERTIFICATE"))
    );

    let toml = toml.replace("cert.pem", "key-only.pem");
    let errors = from_sources(&toml, &env(&[]), dir.path()).unwrap_err();
    assert_eq!(
        errors.to_string(),
        "apps[0].certificate: the certificate credential must contain a PEM certificate"
    );
}

#[test]
fn an_app_needs_exactly_one_credential() {
    let both = BASE.replace(
        "client_id = \"client\"",
        "client_id = \"client\"\ncertificate = \"dev:pem\"",
    );
    let lines = lines(&both, &[]);
    assert_has(&lines, "apps[0]", "both client_secret and certificate");
    let neither = BASE.replace("client_secret = \"env:CONTOSO_SECRET\"", "");
    assert_only(&neither, &[], "apps[0]", "needs a credential");
}

#[test]
fn duplicate_app_names_are_refused() {
    let toml = format!(
        "{BASE}\n[[apps]]\nname = \"contoso\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"dev:x\"\n"
    );
    assert_only(
        &toml,
        &[],
        "apps[1].name",
        "duplicate app name 'contoso', already used by apps[0]",
    );
}
