//! The schema migrations both SQL stores embed, as sqlx runs them. Embedded by hand rather than
//! with `sqlx::migrate!()`, which needs sqlx's `macros` feature; file names follow
//! `migrate!()`'s `<version>_<description>.sql` so the two stay interchangeable (same versions,
//! same checksums).

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// One migration: its version, description and SQL.
pub(super) type Embedded = (i64, &'static str, &'static str);

/// The embedded migrations, ready to run.
pub(super) fn migrator(migrations: &[Embedded]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    (*description).into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}
