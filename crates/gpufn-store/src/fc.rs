//! What the Function Compute API keeps beside a function's spec: FC's own function document
//! (the fields gpufn does not map, returned as they were given), the function's HTTP triggers, and
//! its reserved concurrency. They live in the settings table under the `fc:…:{name}` keys gpufn
//! has always used, so stores written before keep their data; these methods are the only place
//! that knows the keys.

use rusqlite::params;

use crate::{Store, StoreError};

const FUNCTION: &str = "fc:function:";
const TRIGGERS: &str = "fc:triggers:";
const CONCURRENCY: &str = "fc:concurrency:";

impl Store {
    /// FC's document of `function` (JSON), if it was created through the FC API.
    pub fn fc_function(&self, function: &str) -> Result<Option<String>, StoreError> {
        self.setting(&format!("{FUNCTION}{function}"))
    }

    /// Keeps FC's document of `function`.
    pub fn put_fc_function(&self, function: &str, doc: &str) -> Result<(), StoreError> {
        self.set_setting(&format!("{FUNCTION}{function}"), doc)
    }

    /// `function`'s FC triggers (a JSON array), if it has had any.
    pub fn fc_triggers(&self, function: &str) -> Result<Option<String>, StoreError> {
        self.setting(&format!("{TRIGGERS}{function}"))
    }

    /// Keeps `function`'s FC triggers.
    pub fn put_fc_triggers(&self, function: &str, triggers: &str) -> Result<(), StoreError> {
        self.set_setting(&format!("{TRIGGERS}{function}"), triggers)
    }

    /// `function`'s reserved concurrency as PutConcurrencyConfig set it.
    pub fn fc_concurrency(&self, function: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .setting(&format!("{CONCURRENCY}{function}"))?
            .and_then(|v| v.parse().ok()))
    }

    /// Keeps `function`'s reserved concurrency.
    pub fn put_fc_concurrency(&self, function: &str, reserved: i64) -> Result<(), StoreError> {
        self.set_setting(&format!("{CONCURRENCY}{function}"), &reserved.to_string())
    }

    /// Forgets everything FC kept about `function` (its document, triggers and concurrency), at
    /// once.
    pub fn delete_fc(&self, function: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for prefix in [FUNCTION, TRIGGERS, CONCURRENCY] {
            tx.execute(
                "DELETE FROM settings WHERE key = ?1",
                params![format!("{prefix}{function}")],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::Store;

    #[test]
    fn fc_settings_are_kept_per_function_and_deleted_together() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("gpufn.db")).expect("open");
        assert_eq!(store.fc_function("f").expect("read"), None);
        store.put_fc_function("f", r#"{"a":1}"#).expect("put");
        store.put_fc_triggers("f", "[]").expect("put");
        store.put_fc_concurrency("f", 7).expect("put");
        store.put_fc_concurrency("g", 3).expect("put");
        assert_eq!(
            store.fc_function("f").expect("read").as_deref(),
            Some(r#"{"a":1}"#)
        );
        assert_eq!(store.fc_triggers("f").expect("read").as_deref(), Some("[]"));
        assert_eq!(store.fc_concurrency("f").expect("read"), Some(7));
        // The keys of stores written before these methods.
        assert_eq!(
            store.setting("fc:concurrency:f").expect("read").as_deref(),
            Some("7")
        );
        store.delete_fc("f").expect("delete");
        assert_eq!(store.fc_function("f").expect("read"), None);
        assert_eq!(store.fc_triggers("f").expect("read"), None);
        assert_eq!(store.fc_concurrency("f").expect("read"), None);
        assert_eq!(
            store.fc_concurrency("g").expect("read"),
            Some(3),
            "untouched"
        );
    }
}
