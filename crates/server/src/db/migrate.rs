//! The migration runner: the SQL files of `migrations/` are compiled in (a static, ordered list) and each
//! pending one is applied in its own transaction under [`super::MIGRATION_LOCK`], so servers starting
//! together apply each exactly once and a failed migration leaves nothing half-done.

use super::{DbError, MIGRATION_LOCK};

/// One schema change: its version (the file's number), file name and SQL.
pub(crate) struct Migration {
    /// Applied in increasing order; recorded in `schema_migrations.version`.
    pub version: i32,
    /// The file name under `migrations/`.
    pub name: &'static str,
    /// The SQL, run as one batch.
    pub sql: &'static str,
}

/// Every migration, oldest first. Add new files here.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "0001_init.sql", sql: include_str!("../../../../migrations/0001_init.sql") },
    Migration {
        version: 2,
        name: "0002_gc_tombstones.sql",
        sql: include_str!("../../../../migrations/0002_gc_tombstones.sql"),
    },
    Migration {
        version: 3,
        name: "0003_upload_multiparts.sql",
        sql: include_str!("../../../../migrations/0003_upload_multiparts.sql"),
    },
    Migration {
        version: 4,
        name: "0004_api_tokens.sql",
        sql: include_str!("../../../../migrations/0004_api_tokens.sql"),
    },
    Migration {
        version: 5,
        name: "0005_push_verified_objects.sql",
        sql: include_str!("../../../../migrations/0005_push_verified_objects.sql"),
    },
    Migration {
        version: 6,
        name: "0006_claim_function.sql",
        sql: include_str!("../../../../migrations/0006_claim_function.sql"),
    },
    Migration {
        version: 7,
        name: "0007_upload_leases.sql",
        sql: include_str!("../../../../migrations/0007_upload_leases.sql"),
    },
    Migration {
        version: 8,
        name: "0008_gc_timeline.sql",
        sql: include_str!("../../../../migrations/0008_gc_timeline.sql"),
    },
    Migration {
        version: 9,
        name: "0009_audit_log.sql",
        sql: include_str!("../../../../migrations/0009_audit_log.sql"),
    },
    Migration {
        version: 10,
        name: "0010_upload_oidc_owner.sql",
        sql: include_str!("../../../../migrations/0010_upload_oidc_owner.sql"),
    },
    Migration {
        version: 11,
        name: "0011_closures_skipped.sql",
        sql: include_str!("../../../../migrations/0011_closures_skipped.sql"),
    },
    Migration {
        version: 12,
        name: "0012_resumable_multiparts.sql",
        sql: include_str!("../../../../migrations/0012_resumable_multiparts.sql"),
    },
    Migration {
        version: 13,
        name: "0013_pin_audit.sql",
        sql: include_str!("../../../../migrations/0013_pin_audit.sql"),
    },
];

/// Applies the pending migrations; returns how many were applied by this call.
pub(crate) async fn run(client: &mut deadpool_postgres::ClientWrapper) -> Result<usize, DbError> {
    let mut applied = 0;
    for m in MIGRATIONS {
        let err = |source| DbError::Migration { name: m.name.to_owned(), source };
        let t = client.transaction().await.map_err(err)?;
        t.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(err)?;
        t.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (\
               version INT PRIMARY KEY, name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await
        .map_err(err)?;
        let done = t
            .query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[&m.version])
            .await
            .map_err(err)?
            .is_some();
        if done {
            continue;
        }
        t.batch_execute(m.sql).await.map_err(err)?;
        t.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", &[&m.version, &m.name])
            .await
            .map_err(err)?;
        t.commit().await.map_err(err)?;
        tracing::info!(migration = m.name, "applied database migration");
        applied += 1;
    }
    Ok(applied)
}
