//! Access control records: API tokens (hashes only), the audit log of changes, and secrets
//! (ciphertext only: the key lives outside the store).

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// An API token as stored: its hash, never the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// Public id (part of the token text).
    pub id: String,
    /// SHA-256 of the token, hex.
    pub hash: String,
    /// `viewer`, `invoker`, `developer` or `admin`.
    pub role: String,
    /// Function-name prefix it is limited to.
    pub functions: Option<String>,
    /// A label for people.
    pub name: Option<String>,
    /// ms since the epoch.
    pub created_ms: i64,
    /// Invalid from then on.
    pub expires_ms: Option<i64>,
    /// When it was revoked.
    pub revoked_ms: Option<i64>,
    /// The token that created it (`bootstrap` for the first admin token).
    pub created_by: String,
}

/// One change made through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Row id (grows with time).
    pub id: i64,
    /// ms since the epoch.
    pub at_ms: i64,
    /// The token that made the change.
    pub token_id: String,
    /// Its role then.
    pub role: String,
    /// What was done: `function.deploy`, `quota.set`, `token.revoke`...
    pub action: String,
    /// What it was done to (a function, a token id, a secret name).
    pub target: String,
    /// More, when useful (a revision, a quota value); never a secret.
    pub detail: Option<String>,
}

/// A secret as stored: sealed with a key the store does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecret {
    /// Its name.
    pub name: String,
    /// The AEAD nonce.
    pub nonce: Vec<u8>,
    /// The sealed value.
    pub ciphertext: Vec<u8>,
    /// ms since the epoch.
    pub created_ms: i64,
    /// ms since the epoch.
    pub updated_ms: i64,
}

const TOKEN_COLUMNS: &str =
    "id, hash, role, functions, name, created_ms, expires_ms, revoked_ms, created_by";

fn row_to_token(r: &Row<'_>) -> rusqlite::Result<StoredToken> {
    Ok(StoredToken {
        id: r.get(0)?,
        hash: r.get(1)?,
        role: r.get(2)?,
        functions: r.get(3)?,
        name: r.get(4)?,
        created_ms: r.get(5)?,
        expires_ms: r.get(6)?,
        revoked_ms: r.get(7)?,
        created_by: r.get(8)?,
    })
}

impl Store {
    /// Stores a new token.
    pub fn insert_token(&self, t: &StoredToken) -> Result<(), StoreError> {
        self.conn().execute(
            &format!(
                "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ),
            params![
                t.id,
                t.hash,
                t.role,
                t.functions,
                t.name,
                t.created_ms,
                t.expires_ms,
                t.revoked_ms,
                t.created_by
            ],
        )?;
        Ok(())
    }

    /// Every token, oldest first.
    pub fn tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_ms, id"
        ))?;
        let rows = stmt.query_map([], row_to_token)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a token revoked; `None` when there is no such token, else the row as it is now (a
    /// token revoked earlier keeps its first revocation time).
    pub fn revoke_token(&self, id: &str, now_ms: i64) -> Result<Option<StoredToken>, StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE tokens SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms],
        )?;
        Ok(conn
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                [id],
                row_to_token,
            )
            .optional()?)
    }

    /// Appends to the audit log.
    pub fn audit(
        &self,
        at_ms: i64,
        token_id: &str,
        role: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO audit (at_ms, token_id, role, action, target, detail)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![at_ms, token_id, role, action, target, detail],
        )?;
        Ok(())
    }

    /// Audit entries with `id < before` (all when `None`), newest first, at most `limit`.
    pub fn audit_log(
        &self,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, at_ms, token_id, role, action, target, detail FROM audit
             WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![before, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(AuditEntry {
                    id: r.get(0)?,
                    at_ms: r.get(1)?,
                    token_id: r.get(2)?,
                    role: r.get(3)?,
                    action: r.get(4)?,
                    target: r.get(5)?,
                    detail: r.get(6)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Creates or replaces a secret; true when it was new.
    pub fn put_secret(
        &self,
        name: &str,
        nonce: &[u8],
        ciphertext: &[u8],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let conn = self.conn();
        let updated = conn.execute(
            "UPDATE secrets SET nonce = ?2, ciphertext = ?3, updated_ms = ?4 WHERE name = ?1",
            params![name, nonce, ciphertext, now_ms],
        )?;
        if updated == 0 {
            conn.execute(
                "INSERT INTO secrets (name, nonce, ciphertext, created_ms, updated_ms)
                 VALUES (?1, ?2, ?3, ?4, ?4)",
                params![name, nonce, ciphertext, now_ms],
            )?;
        }
        Ok(updated == 0)
    }

    /// One secret.
    pub fn secret(&self, name: &str) -> Result<Option<StoredSecret>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT name, nonce, ciphertext, created_ms, updated_ms FROM secrets WHERE name = ?1",
                [name],
                row_to_secret,
            )
            .optional()?)
    }

    /// Every secret (sealed), by name.
    pub fn secrets(&self) -> Result<Vec<StoredSecret>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT name, nonce, ciphertext, created_ms, updated_ms FROM secrets ORDER BY name",
        )?;
        let rows = stmt.query_map([], row_to_secret)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes a secret; false when there was none.
    pub fn delete_secret(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .execute("DELETE FROM secrets WHERE name = ?1", [name])?
            > 0)
    }
}

fn row_to_secret(r: &Row<'_>) -> rusqlite::Result<StoredSecret> {
    Ok(StoredSecret {
        name: r.get(0)?,
        nonce: r.get(1)?,
        ciphertext: r.get(2)?,
        created_ms: r.get(3)?,
        updated_ms: r.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str) -> StoredToken {
        StoredToken {
            id: id.into(),
            hash: format!("hash-{id}"),
            role: "admin".into(),
            functions: None,
            name: Some("n".into()),
            created_ms: 1,
            expires_ms: None,
            revoked_ms: None,
            created_by: "bootstrap".into(),
        }
    }

    #[test]
    fn tokens_are_stored_listed_and_revoked_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        s.insert_token(&token("a")).expect("insert");
        s.insert_token(&token("b")).expect("insert");
        assert!(s.insert_token(&token("a")).is_err(), "ids are unique");
        assert_eq!(s.tokens().expect("list").len(), 2);
        let r = s.revoke_token("a", 10).expect("revoke").expect("exists");
        assert_eq!(r.revoked_ms, Some(10));
        let r = s.revoke_token("a", 20).expect("revoke").expect("exists");
        assert_eq!(r.revoked_ms, Some(10), "first revocation kept");
        assert_eq!(s.revoke_token("zz", 1).expect("revoke"), None);
    }

    #[test]
    fn audit_pages_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        for i in 0..5 {
            s.audit(i, "t", "admin", "quota.set", "quota", Some(&i.to_string()))
                .expect("audit");
        }
        let page = s.audit_log(None, 2).expect("log");
        assert_eq!(page.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [4, 3]);
        let next = s.audit_log(Some(page[1].id), 10).expect("log");
        assert_eq!(next.iter().map(|e| e.at_ms).collect::<Vec<_>>(), [2, 1, 0]);
    }

    #[test]
    fn secrets_are_replaced_and_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        assert!(s.put_secret("k", b"n1", b"c1", 1).expect("put"));
        assert!(!s.put_secret("k", b"n2", b"c2", 2).expect("put"));
        let got = s.secret("k").expect("get").expect("exists");
        assert_eq!(
            (got.nonce.as_slice(), got.ciphertext.as_slice()),
            (&b"n2"[..], &b"c2"[..])
        );
        assert_eq!((got.created_ms, got.updated_ms), (1, 2));
        assert!(s.delete_secret("k").expect("delete"));
        assert!(!s.delete_secret("k").expect("delete"));
    }
}
