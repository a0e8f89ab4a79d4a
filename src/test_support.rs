//! Test support shared by the unit and integration tests: a fresh database
//! per test, on SQLite by default and on PostgreSQL when
//! `NARA_TEST_POSTGRES_URL` names a server (`postgres://user@host:port/db`;
//! the database given there is only used to create and drop the test's own).

use sqlx::Connection;

/// The environment variable that switches the tests to PostgreSQL.
pub const POSTGRES_ENV: &str = "NARA_TEST_POSTGRES_URL";

/// One test's database, removed when dropped.
pub struct TestDb {
    /// The `database.url` to give the gateway.
    pub url: String,
    /// The SQLite file's folder (kept for the test's lifetime).
    _dir: tempfile::TempDir,
    /// The administrative URL and the name of a PostgreSQL database to drop.
    postgres: Option<(String, String)>,
}

impl TestDb {
    /// A new, empty database.
    pub async fn new() -> anyhow::Result<TestDb> {
        let dir = tempfile::tempdir()?;
        match std::env::var(POSTGRES_ENV).ok().filter(|u| !u.is_empty()) {
            None => Ok(TestDb { url: format!("sqlite://{}/nara.db", dir.path().display()), _dir: dir, postgres: None }),
            Some(admin) => {
                let name = format!("nara_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
                conn.close().await?;
                Ok(TestDb { url: database_url(&admin, &name), _dir: dir, postgres: Some((admin, name)) })
            }
        }
    }

    /// Whether this is a PostgreSQL database.
    pub fn is_postgres(&self) -> bool {
        self.postgres.is_some()
    }
}

/// `admin` with its database name replaced by `name`.
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut url = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else { return };
        // Drop may run inside a runtime: drop the database from a thread of its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
                conn.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop a test database: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced_and_the_options_kept() {
        assert_eq!(super::database_url("postgres://u@h:5432/test", "x"), "postgres://u@h:5432/x");
        assert_eq!(super::database_url("postgres://u@h/test?sslmode=disable", "x"), "postgres://u@h/x?sslmode=disable");
        assert_eq!(super::database_url("postgresql://h", "x"), "postgresql://h/x");
    }
}
