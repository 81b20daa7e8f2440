//! A schema of its own per test on the local PostgreSQL (`INBOXD_TEST_POSTGRES`, default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the guard goes.

use std::str::FromStr;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::store::PgStore;

/// The server the tests use.
pub(crate) fn server_url() -> String {
    std::env::var("INBOXD_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn admin() -> PgConnection {
    let url = server_url();
    match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is required for this test and did not answer at {url} ({e}); start it (e.g. `.ci/postgres`) — 127.0.0.1:5432, trust auth, database `test`"
        ),
    }
}

/// A schema created for one test.
pub(crate) struct Schema {
    /// Its name (`t_` and a random suffix).
    pub name: String,
}

impl Schema {
    /// Creates an empty schema.
    pub async fn create() -> Schema {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin().await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        Schema { name }
    }

    /// Connection options that work in this schema only.
    pub fn options(&self) -> PgConnectOptions {
        PgConnectOptions::from_str(&server_url())
            .unwrap()
            .options([("search_path", self.name.as_str())])
    }

    /// A migrated store on this schema.
    pub async fn open(&self) -> PgStore {
        PgStore::connect(self.options(), &self.name).await.unwrap()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async: a thread of its own with a small runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(mut conn) = PgConnection::connect(&server_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA IF EXISTS {name} CASCADE")))
                            .execute(&mut conn)
                            .await;
                    }
                });
            }
        })
        .join();
    }
}
