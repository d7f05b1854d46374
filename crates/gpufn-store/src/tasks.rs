//! Durable asynchronous tasks and their destination deliveries.
//!
//! A task is written (and fsync'd, `synchronous=FULL`) before its 202 goes out, and every state change
//! is a write, so a gpufn killed at any point loses no accepted task: at the next start, tasks left
//! `running` go back to `queued` (at-least-once; `attempts` shows the retry).

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    /// Waiting to run (first time or for a retry).
    Queued,
    /// An attempt is in progress.
    Running,
    /// The function answered with a status below 500.
    Succeeded,
    /// Every attempt failed (5xx, crash, timeout).
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Older than `async.max_event_age_s` before it could finish.
    Expired,
}

impl TaskState {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Queued => "queued",
            TaskState::Running => "running",
            TaskState::Succeeded => "succeeded",
            TaskState::Failed => "failed",
            TaskState::Cancelled => "cancelled",
            TaskState::Expired => "expired",
        }
    }

    /// Parses a stored or queried name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TaskState::Queued,
            "running" => TaskState::Running,
            "succeeded" => TaskState::Succeeded,
            "failed" => TaskState::Failed,
            "cancelled" => TaskState::Cancelled,
            "expired" => TaskState::Expired,
            _ => return None,
        })
    }

    /// True for states a task never leaves.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskState::Queued | TaskState::Running)
    }
}

/// A task to accept.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// Task id (the caller's `x-gpufn-task-id`, or generated).
    pub id: String,
    /// Function name.
    pub function: String,
    /// HTTP method.
    pub method: String,
    /// Path and query inside the function.
    pub path: String,
    /// Request headers, as a JSON array of `[name, value]`.
    pub headers_json: String,
    /// Request body.
    pub body: Vec<u8>,
    /// Webhook for the result (`x-gpufn-callback-url`).
    pub callback_url: Option<String>,
    /// Accept time, ms since the epoch.
    pub now_ms: i64,
    /// The id of the token that submitted it (an `invoker` reads only its own tasks).
    pub owner: Option<String>,
}

/// What an attempt produced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TaskResult {
    /// HTTP status from the function.
    pub status: Option<i64>,
    /// Response headers as a JSON array of `[name, value]`.
    pub headers_json: Option<String>,
    /// Body kept in the store (small bodies).
    pub body: Option<Vec<u8>>,
    /// File holding the body (large bodies).
    pub file: Option<String>,
    /// Why it failed, for failures.
    pub error: Option<String>,
    /// Size of the stored body, as read (also when the body itself was not).
    pub body_len: Option<i64>,
}

/// A stored task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Task id.
    pub id: String,
    /// Function name.
    pub function: String,
    /// HTTP method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Request headers JSON.
    pub headers_json: String,
    /// Request body.
    pub body: Vec<u8>,
    /// Webhook.
    pub callback_url: Option<String>,
    /// State.
    pub state: TaskState,
    /// Attempts that reached an instance.
    pub attempts: i64,
    /// ms since the epoch.
    pub created_ms: i64,
    /// ms since the epoch.
    pub updated_ms: i64,
    /// First attempt start.
    pub started_ms: Option<i64>,
    /// Final state reached.
    pub finished_ms: Option<i64>,
    /// Earliest next attempt.
    pub next_attempt_ms: i64,
    /// Instance of the last attempt.
    pub instance: Option<String>,
    /// The result so far.
    pub result: TaskResult,
    /// The id of the token that submitted it.
    pub owner: Option<String>,
}

const COLUMNS: &str = "id, function, method, path, headers, body, callback_url, state, attempts,
    created_ms, updated_ms, started_ms, finished_ms, next_attempt_ms, instance, error,
    result_status, result_headers, result_body, result_file, owner, length(result_body)";

/// [`COLUMNS`] without the request and result bodies (empty and `None` in the rows): for lists
/// and the dispatcher's scans, which must not load every body (`TaskResult::body_len` still
/// says how large the result is).
const LIGHT_COLUMNS: &str = "id, function, method, path, headers, zeroblob(0), callback_url, state,
    attempts, created_ms, updated_ms, started_ms, finished_ms, next_attempt_ms, instance, error,
    result_status, result_headers, NULL, result_file, owner, length(result_body)";

fn row_to_task(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    let state: String = r.get(7)?;
    Ok(TaskRow {
        id: r.get(0)?,
        function: r.get(1)?,
        method: r.get(2)?,
        path: r.get(3)?,
        headers_json: r.get(4)?,
        body: r.get(5)?,
        callback_url: r.get(6)?,
        state: TaskState::parse(&state).unwrap_or(TaskState::Failed),
        attempts: r.get(8)?,
        created_ms: r.get(9)?,
        updated_ms: r.get(10)?,
        started_ms: r.get(11)?,
        finished_ms: r.get(12)?,
        next_attempt_ms: r.get(13)?,
        instance: r.get(14)?,
        result: TaskResult {
            error: r.get(15)?,
            status: r.get(16)?,
            headers_json: r.get(17)?,
            body: r.get(18)?,
            file: r.get(19)?,
            body_len: r.get(21)?,
        },
        owner: r.get(20)?,
    })
}

/// A destination delivery due to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Row id.
    pub id: i64,
    /// The task it reports.
    pub task_id: String,
    /// Where to POST.
    pub url: String,
    /// The JSON record.
    pub payload: String,
    /// Attempts so far.
    pub attempts: i64,
}

impl Store {
    /// Accepts a batch of tasks in one transaction (one fsync for all: group commit). A task whose
    /// id exists already is not inserted again; its stored row is returned with `false`.
    pub fn insert_tasks(&self, tasks: &[NewTask]) -> Result<Vec<(TaskRow, bool)>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO tasks (id, function, method, path, headers, body, callback_url,
                    state, created_ms, updated_ms, next_attempt_ms, owner)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8, ?8, ?8, ?9)",
                params![t.id, t.function, t.method, t.path, t.headers_json, t.body, t.callback_url, t.now_ms, t.owner],
            )? == 1;
            let row = tx.query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [&t.id],
                row_to_task,
            )?;
            out.push((row, inserted));
        }
        tx.commit()?;
        Ok(out)
    }

    /// One task.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"),
                [id],
                row_to_task,
            )
            .optional()?)
    }

    /// Tasks, newest first, optionally of one function and/or in one state.
    pub fn tasks(
        &self,
        function: Option<&str>,
        state: Option<TaskState>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, StoreError> {
        self.tasks_of(function, state, None, limit)
    }

    /// [`Store::tasks`], only those submitted by the token `owner` when given.
    pub fn tasks_of(
        &self,
        function: Option<&str>,
        state: Option<TaskState>,
        owner: Option<&str>,
        limit: usize,
    ) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {LIGHT_COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR function = ?1) AND (?2 IS NULL OR state = ?2)
               AND (?4 IS NULL OR owner = ?4)
             ORDER BY created_ms DESC, id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![
                function,
                state.map(TaskState::as_str),
                i64::try_from(limit).unwrap_or(i64::MAX),
                owner
            ],
            row_to_task,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts of tasks by state (for one function or all).
    pub fn task_counts(&self, function: Option<&str>) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT state, COUNT(*) FROM tasks WHERE (?1 IS NULL OR function = ?1) GROUP BY state",
        )?;
        let rows = stmt.query_map(params![function], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Queued tasks whose next attempt is due, oldest first.
    pub fn runnable_tasks(&self, now_ms: i64, limit: usize) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {LIGHT_COLUMNS} FROM tasks WHERE state = 'queued' AND next_attempt_ms <= ?1
             ORDER BY next_attempt_ms, created_ms LIMIT ?2"
        ))?;
        let rows = stmt.query_map(
            params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            row_to_task,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// A task's request body (lists and the dispatcher's scans do not carry it).
    pub fn task_body(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT body FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?)
    }

    /// Tasks of `function` queued or running.
    pub fn pending_tasks(&self, function: &str) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COUNT(*) FROM tasks WHERE function = ?1 AND state IN ('queued', 'running')",
            [function],
            |r| r.get(0),
        )?)
    }

    /// Bytes of request bodies of every task queued or running.
    pub fn pending_task_bytes(&self) -> Result<i64, StoreError> {
        Ok(self.conn().query_row(
            "SELECT COALESCE(SUM(length(body)), 0) FROM tasks WHERE state IN ('queued', 'running')",
            [],
            |r| r.get(0),
        )?)
    }

    /// When the next queued task becomes due, if any.
    pub fn next_task_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_attempt_ms) FROM tasks WHERE state = 'queued'",
            [],
            |r| r.get(0),
        )?)
    }

    /// `queued` → `running`; false if the task was not queued (cancelled meanwhile).
    pub fn start_task(&self, id: &str, now_ms: i64) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE tasks SET state = 'running', updated_ms = ?2, started_ms = COALESCE(started_ms, ?2)
             WHERE id = ?1 AND state = 'queued'",
            params![id, now_ms],
        )? == 1)
    }

    /// An attempt reached an instance.
    pub fn count_attempt(&self, id: &str, instance: &str, now_ms: i64) -> Result<i64, StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE tasks SET attempts = attempts + 1, instance = ?2, updated_ms = ?3
             WHERE id = ?1 AND state = 'running'",
            params![id, instance, now_ms],
        )?;
        Ok(conn
            .query_row("SELECT attempts FROM tasks WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    /// A running task reaches a final state, with its result and the deliveries to make. Returns
    /// false (and changes nothing) if it is no longer running (cancelled meanwhile).
    pub fn finish_task(
        &self,
        id: &str,
        state: TaskState,
        result: &TaskResult,
        deliveries: &[(String, String)],
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let changed = tx.execute(
            "UPDATE tasks SET state = ?2, updated_ms = ?3, finished_ms = ?3, error = ?4,
                result_status = ?5, result_headers = ?6, result_body = ?7, result_file = ?8
             WHERE id = ?1 AND state IN ('running', 'queued')",
            params![
                id,
                state.as_str(),
                now_ms,
                result.error,
                result.status,
                result.headers_json,
                result.body,
                result.file
            ],
        )? == 1;
        if changed {
            for (url, payload) in deliveries {
                tx.execute(
                    "INSERT INTO deliveries (task_id, url, payload, state, next_ms)
                     VALUES (?1, ?2, ?3, 'pending', ?4)",
                    params![id, url, payload, now_ms],
                )?;
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// A failed attempt with retries left: back to `queued`, due at `next_ms`.
    pub fn retry_task(
        &self,
        id: &str,
        error: &str,
        next_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.conn().execute(
            "UPDATE tasks SET state = 'queued', error = ?2, next_attempt_ms = ?3, updated_ms = ?4
             WHERE id = ?1 AND state = 'running'",
            params![id, error, next_ms, now_ms],
        )? == 1)
    }

    /// Cancels a queued or running task; returns its state afterwards (None if unknown).
    pub fn cancel_task(&self, id: &str, now_ms: i64) -> Result<Option<TaskState>, StoreError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE tasks SET state = 'cancelled', updated_ms = ?2, finished_ms = ?2
             WHERE id = ?1 AND state IN ('queued', 'running')",
            params![id, now_ms],
        )?;
        let state: Option<String> = conn
            .query_row("SELECT state FROM tasks WHERE id = ?1", [id], |r| r.get(0))
            .optional()?;
        Ok(state.as_deref().and_then(TaskState::parse))
    }

    /// After a restart: every task left `running` goes back to `queued`, due now.
    pub fn requeue_running(&self, now_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn().execute(
            "UPDATE tasks SET state = 'queued', next_attempt_ms = ?1, updated_ms = ?1,
                error = 'gpufn restarted during the attempt'
             WHERE state = 'running'",
            [now_ms],
        )?)
    }

    /// Removes final tasks finished before `before_ms`; returns their result files.
    pub fn purge_tasks(&self, before_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let files: Vec<String> = {
            let mut stmt = tx.prepare(
                "SELECT result_file FROM tasks
                 WHERE finished_ms < ?1 AND result_file IS NOT NULL",
            )?;
            let rows = stmt.query_map([before_ms], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        tx.execute(
            "DELETE FROM deliveries WHERE task_id IN (SELECT id FROM tasks WHERE finished_ms < ?1)",
            [before_ms],
        )?;
        tx.execute("DELETE FROM tasks WHERE finished_ms < ?1", [before_ms])?;
        tx.commit()?;
        Ok(files)
    }

    /// Pending deliveries due now.
    pub fn due_deliveries(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, task_id, url, payload, attempts FROM deliveries
             WHERE state = 'pending' AND next_ms <= ?1 ORDER BY next_ms LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![now_ms, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    task_id: r.get(1)?,
                    url: r.get(2)?,
                    payload: r.get(3)?,
                    attempts: r.get(4)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next pending delivery is due.
    pub fn next_delivery_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn().query_row(
            "SELECT MIN(next_ms) FROM deliveries WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )?)
    }

    /// Records a delivery attempt: delivered, retry at `next_ms`, or given up.
    pub fn delivery_attempted(
        &self,
        id: i64,
        delivered: bool,
        give_up: bool,
        error: Option<&str>,
        next_ms: i64,
    ) -> Result<(), StoreError> {
        let state = if delivered {
            "delivered"
        } else if give_up {
            "failed"
        } else {
            "pending"
        };
        self.conn().execute(
            "UPDATE deliveries SET state = ?2, attempts = attempts + 1, last_error = ?3, next_ms = ?4
             WHERE id = ?1",
            params![id, state, error, next_ms],
        )?;
        Ok(())
    }

    /// Delivery states of a task's records: (url, state, attempts).
    pub fn deliveries_of(&self, task_id: &str) -> Result<Vec<(String, String, i64)>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT url, state, attempts FROM deliveries WHERE task_id = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([task_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(id: &str, now_ms: i64) -> NewTask {
        NewTask {
            id: id.into(),
            function: "f".into(),
            method: "POST".into(),
            path: "/work".into(),
            headers_json: "[]".into(),
            body: b"x".to_vec(),
            callback_url: None,
            now_ms,
            owner: Some("tok1".into()),
        }
    }

    #[test]
    fn lists_and_scans_carry_no_bodies_and_pending_work_is_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let mut big = new("big", 10);
        big.body = vec![7u8; 100_000];
        s.insert_tasks(&[big, new("small", 20)]).expect("insert");
        for row in s.tasks(Some("f"), None, 10).expect("list") {
            assert!(row.body.is_empty(), "{}", row.id);
        }
        for row in s.runnable_tasks(100, 10).expect("runnable") {
            assert!(row.body.is_empty(), "{}", row.id);
        }
        assert_eq!(
            s.task_body("big").expect("body").map(|b| b.len()),
            Some(100_000)
        );
        assert_eq!(
            s.task("big").expect("task").map(|t| t.body.len()),
            Some(100_000)
        );
        assert_eq!(s.pending_tasks("f").expect("count"), 2);
        assert_eq!(s.pending_tasks("g").expect("count"), 0);
        assert_eq!(s.pending_task_bytes().expect("bytes"), 100_001);
        assert!(s.cancel_task("big", 30).expect("cancel").is_some());
        assert_eq!(
            s.pending_tasks("f").expect("count"),
            1,
            "a final task is not pending"
        );
        assert_eq!(s.pending_task_bytes().expect("bytes"), 1);
    }

    #[test]
    fn a_task_lives_through_retry_and_finish_and_ids_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        let out = s
            .insert_tasks(&[new("a", 10), new("a", 20), new("b", 30)])
            .expect("insert");
        assert_eq!(
            out.iter()
                .map(|(r, c)| (r.id.as_str(), *c))
                .collect::<Vec<_>>(),
            [("a", true), ("a", false), ("b", true)]
        );
        assert_eq!(out[1].0.created_ms, 10, "the first submission wins");
        assert_eq!(s.runnable_tasks(100, 10).expect("runnable").len(), 2);
        assert!(s.start_task("a", 100).expect("start"));
        assert!(!s.start_task("a", 100).expect("not twice"));
        assert_eq!(s.count_attempt("a", "f-1", 101).expect("attempt"), 1);
        assert!(s.retry_task("a", "503", 2_000, 102).expect("retry"));
        assert_eq!(
            s.runnable_tasks(1_000, 10).expect("runnable").len(),
            1,
            "a is not due yet"
        );
        assert_eq!(s.next_task_due().expect("due"), Some(30));
        assert!(s.start_task("a", 2_000).expect("start"));
        let result = TaskResult {
            status: Some(200),
            body: Some(b"ok".to_vec()),
            ..TaskResult::default()
        };
        let deliveries = [("http://h/x".to_string(), "{}".to_string())];
        assert!(
            s.finish_task("a", TaskState::Succeeded, &result, &deliveries, 2_100)
                .expect("finish")
        );
        let a = s.task("a").expect("get").expect("exists");
        assert_eq!(
            (a.state, a.attempts, a.result.status, a.finished_ms),
            (TaskState::Succeeded, 1, Some(200), Some(2_100))
        );
        assert_eq!(s.due_deliveries(3_000, 10).expect("due").len(), 1);
        assert_eq!(s.task_counts(None).expect("counts").len(), 2);
    }

    #[test]
    fn cancel_and_restart_recovery() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("db")).expect("open");
        s.insert_tasks(&[new("q", 1), new("r", 2), new("done", 3)])
            .expect("insert");
        s.start_task("r", 5).expect("start");
        s.start_task("done", 5).expect("start");
        s.finish_task("done", TaskState::Failed, &TaskResult::default(), &[], 6)
            .expect("finish");
        assert_eq!(
            s.cancel_task("done", 7).expect("cancel"),
            Some(TaskState::Failed),
            "final stays final"
        );
        assert_eq!(s.cancel_task("nope", 7).expect("cancel"), None);
        assert_eq!(s.requeue_running(8).expect("requeue"), 1);
        assert_eq!(
            s.task("r").expect("get").map(|t| t.state),
            Some(TaskState::Queued)
        );
        assert_eq!(
            s.cancel_task("q", 9).expect("cancel"),
            Some(TaskState::Cancelled)
        );
        assert!(!s.start_task("q", 10).expect("cancelled tasks do not start"));
        assert!(s.purge_tasks(100).expect("purge").is_empty());
        assert!(s.task("done").expect("get").is_none(), "purged");
        assert!(
            s.task("r").expect("get").is_some(),
            "unfinished tasks are kept"
        );
    }
}
