//! The embedded store: one SQLite file (`<data-dir>/gpufn.db`) in WAL mode.
//!
//! It keeps what must survive a restart: deployed functions (their validated spec as JSON and a
//! revision), settings such as the card quota, and the process ids of live instances, so that a
//! gpufn killed without a chance to clean up can stop its orphans on the next start.
//! Calls are short and synchronous; callers hold no other lock while calling.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

mod access;
mod fc;
mod tasks;
pub use access::{AuditEntry, StoredSecret, StoredToken};
pub use tasks::{Delivery, NewTask, TaskResult, TaskRow, TaskState};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer gpufn.
    #[error("store: schema version {found} is newer than this gpufn understands ({known})")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Newest version known.
        known: i64,
    },
}

/// A deployed function as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFunction {
    /// Function name.
    pub name: String,
    /// The validated spec, as JSON.
    pub spec_json: String,
    /// Starts at 1, grows by one on every change of spec.
    pub revision: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at_ms: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

/// An instance process gpufn started and has not yet seen stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Instance id.
    pub id: String,
    /// Function name.
    pub function: String,
    /// Process id (also the process group id).
    pub pid: i64,
}

/// Schema migrations, applied in order; `PRAGMA user_version` counts the ones applied.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE functions (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        revision INTEGER NOT NULL,
        created_at_ms INTEGER NOT NULL,
        updated_at_ms INTEGER NOT NULL
     );
     CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE instances (
        id TEXT PRIMARY KEY,
        function TEXT NOT NULL,
        pid INTEGER NOT NULL
     );",
    "CREATE TABLE busy_periods (
        id INTEGER PRIMARY KEY,
        function TEXT NOT NULL,
        instance TEXT NOT NULL,
        start_ms INTEGER NOT NULL,
        busy_ms INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        billed_s INTEGER NOT NULL,
        memory_gb INTEGER NOT NULL
     );
     CREATE INDEX busy_periods_by_time ON busy_periods (function, start_ms);
     CREATE TABLE provisioned_idle (
        id INTEGER PRIMARY KEY,
        function TEXT NOT NULL,
        instance TEXT NOT NULL,
        end_ms INTEGER NOT NULL,
        idle_s INTEGER NOT NULL,
        memory_gb INTEGER NOT NULL
     );
     CREATE INDEX provisioned_idle_by_time ON provisioned_idle (function, end_ms);
     CREATE TABLE cold_starts (
        id INTEGER PRIMARY KEY,
        function TEXT NOT NULL,
        instance TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        gpu_allocate_ms REAL NOT NULL,
        image_pull_ms REAL NOT NULL,
        start_ms REAL NOT NULL,
        ready_ms REAL NOT NULL,
        first_response_ms REAL NOT NULL,
        total_ms REAL NOT NULL
     );
     CREATE INDEX cold_starts_by_time ON cold_starts (function, at_ms);",
    "CREATE TABLE tasks (
        id TEXT PRIMARY KEY,
        function TEXT NOT NULL,
        method TEXT NOT NULL,
        path TEXT NOT NULL,
        headers TEXT NOT NULL,
        body BLOB NOT NULL,
        callback_url TEXT,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        started_ms INTEGER,
        finished_ms INTEGER,
        next_attempt_ms INTEGER NOT NULL,
        instance TEXT,
        error TEXT,
        result_status INTEGER,
        result_headers TEXT,
        result_body BLOB,
        result_file TEXT
     );
     CREATE INDEX tasks_runnable ON tasks (state, next_attempt_ms);
     CREATE INDEX tasks_by_function ON tasks (function, created_ms);
     CREATE TABLE deliveries (
        id INTEGER PRIMARY KEY,
        task_id TEXT NOT NULL,
        url TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_ms INTEGER NOT NULL,
        last_error TEXT
     );
     CREATE INDEX deliveries_due ON deliveries (state, next_ms);",
    "CREATE TABLE fc_nonces (nonce TEXT PRIMARY KEY, seen_ms INTEGER NOT NULL);
     CREATE INDEX fc_nonces_by_time ON fc_nonces (seen_ms);",
    "CREATE TABLE tokens (
        id TEXT PRIMARY KEY,
        hash TEXT NOT NULL,
        role TEXT NOT NULL,
        functions TEXT,
        name TEXT,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER,
        revoked_ms INTEGER,
        created_by TEXT NOT NULL
     );
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        token_id TEXT NOT NULL,
        role TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT
     );
     CREATE INDEX audit_by_time ON audit (at_ms);
     CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        nonce BLOB NOT NULL,
        ciphertext BLOB NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
     );
     ALTER TABLE tasks ADD COLUMN owner TEXT;",
    "ALTER TABLE cold_starts ADD COLUMN initialize_ms REAL NOT NULL DEFAULT 0;",
];

/// The store. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: a deploy that returned 200 survives a power cut, not only a crash.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        // SQLite keeps its own consistency; a panic elsewhere while holding the guard does not
        // leave the connection unusable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates or updates a function. The revision grows only when the spec changed; returns the
    /// stored row and whether it changed.
    pub fn put_function(
        &self,
        name: &str,
        spec_json: &str,
        now_ms: i64,
    ) -> Result<(StoredFunction, bool), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = get(&tx, name)?;
        let (row, changed) = match old {
            Some(old) if old.spec_json == spec_json => (old, false),
            Some(old) => {
                let row = StoredFunction {
                    spec_json: spec_json.to_string(),
                    revision: old.revision + 1,
                    updated_at_ms: now_ms,
                    ..old
                };
                tx.execute(
                    "UPDATE functions SET spec = ?2, revision = ?3, updated_at_ms = ?4 WHERE name = ?1",
                    params![name, row.spec_json, row.revision, now_ms],
                )?;
                (row, true)
            }
            None => {
                tx.execute(
                    "INSERT INTO functions (name, spec, revision, created_at_ms, updated_at_ms)
                     VALUES (?1, ?2, 1, ?3, ?3)",
                    params![name, spec_json, now_ms],
                )?;
                let row = StoredFunction {
                    name: name.to_string(),
                    spec_json: spec_json.to_string(),
                    revision: 1,
                    created_at_ms: now_ms,
                    updated_at_ms: now_ms,
                };
                (row, true)
            }
        };
        tx.commit()?;
        Ok((row, changed))
    }

    /// One function, if deployed.
    pub fn get_function(&self, name: &str) -> Result<Option<StoredFunction>, StoreError> {
        get(&self.conn(), name)
    }

    /// All functions, by name.
    pub fn list_functions(&self) -> Result<Vec<StoredFunction>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, spec, revision, created_at_ms, updated_at_ms FROM functions ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_function)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a function; false when it did not exist.
    pub fn delete_function(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM functions WHERE name = ?1", [name])?
            > 0)
    }

    /// A setting's value.
    pub fn setting(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting.
    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Removes a setting (no error when absent).
    pub fn delete_setting(&self, key: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM settings WHERE key = ?1", [key])?;
        Ok(())
    }

    /// Records a started instance process.
    pub fn add_instance(&self, rec: &InstanceRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT OR REPLACE INTO instances (id, function, pid) VALUES (?1, ?2, ?3)",
            params![rec.id, rec.function, rec.pid],
        )?;
        Ok(())
    }

    /// Forgets an instance process that has exited.
    pub fn remove_instance(&self, id: &str) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM instances WHERE id = ?1", [id])?;
        Ok(())
    }

    /// Instance processes recorded as running.
    pub fn instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT id, function, pid FROM instances ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok(InstanceRecord {
                id: r.get(0)?,
                function: r.get(1)?,
                pid: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A metering record, written in batches by the server's meter thread.
#[derive(Debug, Clone, PartialEq)]
pub enum MeterRecord {
    /// A closed busy period of an instance.
    Busy {
        /// Function name.
        function: String,
        /// Instance id.
        instance: String,
        /// Start, ms since the epoch.
        start_ms: i64,
        /// Length in ms.
        busy_ms: i64,
        /// Requests started in the period.
        requests: i64,
        /// Seconds billed (the length rounded up).
        billed_s: i64,
        /// GPU memory billed per second.
        memory_gb: i64,
    },
    /// The idle seconds of a provisioned instance's whole lifetime, written when it stops.
    ProvisionedIdle {
        /// Function name.
        function: String,
        /// Instance id.
        instance: String,
        /// When the instance stopped, ms since the epoch.
        end_ms: i64,
        /// Lifetime (rounded up) minus billed busy seconds.
        idle_s: i64,
        /// GPU memory billed per second.
        memory_gb: i64,
    },
    /// A cold start, with its phases.
    ColdStart(ColdStartRow),
    /// A signature nonce the FC-compatible API accepted: not metering, but written the same
    /// batched way, so a restart does not make a captured request valid again. Nonces seen before
    /// `forget_before_ms` are deleted in the same transaction.
    Nonce {
        /// The `x-acs-signature-nonce`.
        nonce: String,
        /// When it was accepted, ms since the epoch.
        seen_ms: i64,
        /// Older nonces can no longer come back with a valid date.
        forget_before_ms: i64,
    },
}

/// A cold start as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ColdStartRow {
    /// Function name.
    pub function: String,
    /// The instance that was started.
    pub instance: String,
    /// When the triggering request arrived, ms since the epoch.
    pub at_ms: i64,
    /// Card allocation.
    pub gpu_allocate_ms: f64,
    /// Image pull (0 for process functions).
    pub image_pull_ms: f64,
    /// Spawn.
    pub start_ms: f64,
    /// Spawn → health check passes.
    pub ready_ms: f64,
    /// The `lifecycle.initializer` hook (0 without one).
    pub initialize_ms: f64,
    /// Ready → the instance's first response headers.
    pub first_response_ms: f64,
    /// Request arrival → first byte to the caller.
    pub total_ms: f64,
}

/// One bucket of a function's usage time series.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct UsageBucket {
    /// Bucket start, ms since the epoch.
    pub t_ms: i64,
    /// Requests served in busy periods that started in the bucket.
    pub invocations: i64,
    /// Cold starts recorded in the bucket.
    pub cold_starts: i64,
    /// Active GB-seconds billed for those busy periods.
    pub gb_seconds: f64,
}

/// Billing sums for one function over a time window (prices are applied by the caller).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BillingSums {
    /// Function name.
    pub function: String,
    /// Requests served.
    pub invocations: i64,
    /// Active seconds billed.
    pub billed_seconds: i64,
    /// Active GB-seconds.
    pub gb_seconds: f64,
    /// Provisioned idle GB-seconds.
    pub idle_gb_seconds: f64,
}

impl Store {
    /// Writes a batch of metering records in one transaction.
    pub fn write_meter(&self, records: &[MeterRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for r in records {
            match r {
                MeterRecord::Busy {
                    function,
                    instance,
                    start_ms,
                    busy_ms,
                    requests,
                    billed_s,
                    memory_gb,
                } => tx.execute(
                    "INSERT INTO busy_periods (function, instance, start_ms, busy_ms, requests, billed_s, memory_gb)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![function, instance, start_ms, busy_ms, requests, billed_s, memory_gb],
                )?,
                MeterRecord::ProvisionedIdle {
                    function,
                    instance,
                    end_ms,
                    idle_s,
                    memory_gb,
                } => tx.execute(
                    "INSERT INTO provisioned_idle (function, instance, end_ms, idle_s, memory_gb)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![function, instance, end_ms, idle_s, memory_gb],
                )?,
                MeterRecord::ColdStart(c) => tx.execute(
                    "INSERT INTO cold_starts (function, instance, at_ms, gpu_allocate_ms, image_pull_ms,
                        start_ms, ready_ms, first_response_ms, total_ms, initialize_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    params![
                        c.function,
                        c.instance,
                        c.at_ms,
                        c.gpu_allocate_ms,
                        c.image_pull_ms,
                        c.start_ms,
                        c.ready_ms,
                        c.first_response_ms,
                        c.total_ms,
                        c.initialize_ms
                    ],
                )?,
                MeterRecord::Nonce {
                    nonce,
                    seen_ms,
                    forget_before_ms,
                } => {
                    tx.execute(
                        "DELETE FROM fc_nonces WHERE seen_ms < ?1",
                        [forget_before_ms],
                    )?;
                    tx.execute(
                        "INSERT OR IGNORE INTO fc_nonces (nonce, seen_ms) VALUES (?1, ?2)",
                        params![nonce, seen_ms],
                    )?
                }
            };
        }
        tx.commit()?;
        Ok(())
    }

    /// FC signature nonces accepted at or after `since_ms`, with when.
    pub fn recent_nonces(&self, since_ms: i64) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT nonce, seen_ms FROM fc_nonces WHERE seen_ms >= ?1")?;
        let rows = stmt.query_map([since_ms], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Billing sums per function for busy periods starting, and provisioned instances ending, in
    /// `[from_ms, to_ms)`; one function or all.
    pub fn billing(
        &self,
        function: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Vec<BillingSums>, StoreError> {
        let conn = self.conn();
        let mut out: std::collections::BTreeMap<String, BillingSums> = Default::default();
        let mut stmt = conn.prepare(
            "SELECT function, SUM(requests), SUM(billed_s), SUM(billed_s * memory_gb)
             FROM busy_periods
             WHERE start_ms >= ?1 AND start_ms < ?2 AND (?3 IS NULL OR function = ?3)
             GROUP BY function",
        )?;
        let rows = stmt.query_map(params![from_ms, to_ms, function], |r| {
            Ok(BillingSums {
                function: r.get(0)?,
                invocations: r.get(1)?,
                billed_seconds: r.get(2)?,
                gb_seconds: r.get::<_, i64>(3)? as f64,
                idle_gb_seconds: 0.0,
            })
        })?;
        for row in rows {
            let row = row?;
            out.insert(row.function.clone(), row);
        }
        let mut stmt = conn.prepare(
            "SELECT function, SUM(idle_s * memory_gb) FROM provisioned_idle
             WHERE end_ms >= ?1 AND end_ms < ?2 AND (?3 IS NULL OR function = ?3)
             GROUP BY function",
        )?;
        let rows = stmt.query_map(params![from_ms, to_ms, function], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (f, idle) = row?;
            out.entry(f.clone())
                .or_insert_with(|| BillingSums {
                    function: f,
                    ..BillingSums::default()
                })
                .idle_gb_seconds = idle as f64;
        }
        Ok(out.into_values().collect())
    }

    /// A function's usage in `[from_ms, to_ms)` cut into `step_ms` buckets (every bucket present,
    /// empty ones as zeros), for charts.
    pub fn usage(
        &self,
        function: &str,
        from_ms: i64,
        to_ms: i64,
        step_ms: i64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        let step = step_ms.max(1);
        let n = usize::try_from(((to_ms - from_ms).max(0) + step - 1) / step).unwrap_or(0);
        let mut out: Vec<UsageBucket> = (0..n)
            .map(|i| UsageBucket {
                t_ms: from_ms + i as i64 * step,
                ..UsageBucket::default()
            })
            .collect();
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT (start_ms - ?2) / ?4, SUM(requests), SUM(billed_s * memory_gb) FROM busy_periods
             WHERE function = ?1 AND start_ms >= ?2 AND start_ms < ?3 GROUP BY 1",
        )?;
        let rows = stmt.query_map(params![function, from_ms, to_ms, step], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (i, req, gbs) = row?;
            if let Some(b) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                b.invocations = req;
                b.gb_seconds = gbs as f64;
            }
        }
        let mut stmt = conn.prepare(
            "SELECT (at_ms - ?2) / ?4, COUNT(*) FROM cold_starts
             WHERE function = ?1 AND at_ms >= ?2 AND at_ms < ?3 GROUP BY 1",
        )?;
        let rows = stmt.query_map(params![function, from_ms, to_ms, step], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })?;
        for row in rows {
            let (i, n) = row?;
            if let Some(b) = usize::try_from(i).ok().and_then(|i| out.get_mut(i)) {
                b.cold_starts = n;
            }
        }
        Ok(out)
    }

    /// The most recent cold starts of a function, newest first.
    pub fn cold_starts(
        &self,
        function: &str,
        limit: usize,
    ) -> Result<Vec<ColdStartRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT function, instance, at_ms, gpu_allocate_ms, image_pull_ms, start_ms, ready_ms,
                    first_response_ms, total_ms, initialize_ms
             FROM cold_starts WHERE function = ?1 ORDER BY at_ms DESC, id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![function, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(ColdStartRow {
                    function: r.get(0)?,
                    instance: r.get(1)?,
                    at_ms: r.get(2)?,
                    gpu_allocate_ms: r.get(3)?,
                    image_pull_ms: r.get(4)?,
                    start_ms: r.get(5)?,
                    ready_ms: r.get(6)?,
                    first_response_ms: r.get(7)?,
                    total_ms: r.get(8)?,
                    initialize_ms: r.get(9)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Number of cold starts of a function since `from_ms`.
    pub fn cold_start_count(&self, function: &str, from_ms: i64) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM cold_starts WHERE function = ?1 AND at_ms >= ?2",
            params![function, from_ms],
            |r| r.get(0),
        )?)
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(StoreError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        conn.execute_batch(&format!(
            "BEGIN; {sql}; PRAGMA user_version = {}; COMMIT;",
            i + 1
        ))?;
    }
    Ok(())
}

fn get(conn: &Connection, name: &str) -> Result<Option<StoredFunction>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name, spec, revision, created_at_ms, updated_at_ms FROM functions WHERE name = ?1",
            [name],
            row_to_function,
        )
        .optional()?)
}

fn row_to_function(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredFunction> {
    Ok(StoredFunction {
        name: r.get(0)?,
        spec_json: r.get(1)?,
        revision: r.get(2)?,
        created_at_ms: r.get(3)?,
        updated_at_ms: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_survive_reopening_and_revisions_grow_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gpufn.db");
        {
            let s = Store::open(&path).expect("open");
            let (row, changed) = s.put_function("a", "{\"v\":1}", 10).expect("put");
            assert_eq!((row.revision, changed), (1, true));
            let (row, changed) = s.put_function("a", "{\"v\":1}", 20).expect("same");
            assert_eq!((row.revision, changed, row.updated_at_ms), (1, false, 10));
            let (row, changed) = s.put_function("a", "{\"v\":2}", 30).expect("new");
            assert_eq!((row.revision, changed, row.created_at_ms), (2, true, 10));
            s.put_function("b", "{}", 40).expect("b");
            s.set_setting("quota_cards", "7").expect("set");
            s.set_setting("quota_cards", "8").expect("set again");
        }
        let s = Store::open(&path).expect("reopen");
        let names: Vec<String> = s
            .list_functions()
            .expect("list")
            .into_iter()
            .map(|f| f.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(
            s.get_function("a").expect("get").map(|f| f.revision),
            Some(2)
        );
        assert_eq!(s.setting("quota_cards").expect("get").as_deref(), Some("8"));
        assert!(s.delete_function("a").expect("delete"));
        assert!(!s.delete_function("a").expect("delete again"));
        assert_eq!(s.get_function("a").expect("get"), None);
    }

    #[test]
    fn instance_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let rec = InstanceRecord {
            id: "f-1".into(),
            function: "f".into(),
            pid: 42,
        };
        s.add_instance(&rec).expect("add");
        assert_eq!(s.instances().expect("list"), vec![rec]);
        s.remove_instance("f-1").expect("remove");
        assert!(s.instances().expect("list").is_empty());
    }

    #[test]
    fn nonces_survive_reopening_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let nonce = |n: &str, seen_ms, forget_before_ms| MeterRecord::Nonce {
            nonce: n.into(),
            seen_ms,
            forget_before_ms,
        };
        {
            let s = Store::open(&path).expect("open");
            s.write_meter(&[nonce("a", 1_000, 0), nonce("b", 5_000, 0)])
                .expect("write");
            // The same nonce twice is one row (the verifier refuses it before it gets here).
            s.write_meter(&[nonce("b", 6_000, 0)]).expect("again");
        }
        let s = Store::open(&path).expect("reopen");
        let mut got = s.recent_nonces(0).expect("read");
        got.sort();
        assert_eq!(got, [("a".to_string(), 1_000), ("b".to_string(), 5_000)]);
        assert_eq!(s.recent_nonces(2_000).expect("read").len(), 1);
        // A later nonce forgets the ones seen before its cut-off.
        s.write_meter(&[nonce("c", 9_000, 4_000)]).expect("write");
        let mut got: Vec<String> = s
            .recent_nonces(0)
            .expect("read")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        got.sort();
        assert_eq!(got, ["b", "c"]);
    }

    #[test]
    fn meter_records_sum_per_function_and_window() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let busy = |f: &str, start_ms, billed_s, requests| MeterRecord::Busy {
            function: f.into(),
            instance: format!("{f}-1"),
            start_ms,
            busy_ms: billed_s * 1000 - 1,
            requests,
            billed_s,
            memory_gb: 4,
        };
        let cold = |at_ms, total_ms| {
            MeterRecord::ColdStart(ColdStartRow {
                function: "a".into(),
                instance: "a-1".into(),
                at_ms,
                gpu_allocate_ms: 0.1,
                image_pull_ms: 0.0,
                start_ms: 1.0,
                ready_ms: 100.0,
                initialize_ms: 7.0,
                first_response_ms: 5.0,
                total_ms,
            })
        };
        s.write_meter(&[
            busy("a", 1_000, 2, 3),
            busy("a", 5_000, 1, 1),
            busy("b", 2_000, 10, 1),
            MeterRecord::ProvisionedIdle {
                function: "b".into(),
                instance: "b-1".into(),
                end_ms: 3_000,
                idle_s: 50,
                memory_gb: 4,
            },
            cold(1_000, 120.0),
            cold(9_000, 130.0),
        ])
        .expect("write");
        let all = s.billing(None, 0, i64::MAX).expect("billing");
        assert_eq!(all.len(), 2);
        assert_eq!(
            (all[0].invocations, all[0].billed_seconds, all[0].gb_seconds),
            (4, 3, 12.0)
        );
        assert_eq!((all[1].billed_seconds, all[1].idle_gb_seconds), (10, 200.0));
        let window = s.billing(Some("a"), 0, 5_000).expect("window");
        assert_eq!(window.len(), 1);
        assert_eq!(window[0].billed_seconds, 2);
        let recent = s.cold_starts("a", 10).expect("cold");
        assert_eq!(
            recent.iter().map(|c| c.at_ms).collect::<Vec<_>>(),
            [9_000, 1_000]
        );
        assert_eq!(s.cold_starts("a", 1).expect("cold").len(), 1);
        assert_eq!(s.cold_start_count("a", 5_000).expect("count"), 1);
        // Usage in 4 s buckets over [0, 12 s): a's busy periods at 1 s and 5 s, cold starts at
        // 1 s and 9 s; every bucket present.
        let usage = s.usage("a", 0, 12_000, 4_000).expect("usage");
        let rows: Vec<(i64, i64, i64, f64)> = usage
            .iter()
            .map(|b| (b.t_ms, b.invocations, b.cold_starts, b.gb_seconds))
            .collect();
        assert_eq!(
            rows,
            [(0, 3, 1, 8.0), (4_000, 1, 0, 4.0), (8_000, 0, 1, 0.0)]
        );
        assert!(
            s.usage("nobody", 0, 8_000, 4_000)
                .expect("empty")
                .iter()
                .all(|b| b.invocations == 0)
        );
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", 99))
            .expect("bump");
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::TooNew { found: 99, .. })
        ));
    }
}
