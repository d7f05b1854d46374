//! The embedded store: one SQLite file (`<data-dir>/gpufn.db`) in WAL mode.
//!
//! It keeps what must survive a restart: deployed functions (their validated spec as JSON and a
//! revision), settings such as the card quota, and the process ids of live instances, so that a
//! gpufn killed without a chance to clean up can stop its orphans on the next start.
//! Calls are short and synchronous; callers hold no other lock while calling.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, params};

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
const MIGRATIONS: &[&str] = &["CREATE TABLE functions (
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
     );"];

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

    fn conn(&self) -> MutexGuard<'_, Connection> {
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
