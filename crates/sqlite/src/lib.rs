//! A SQLite connection owned by a thread of its own, for the embedded queue and
//! store of `courier standalone`.
//!
//! SQLite's calls block, so they must not run on the async runtime's threads;
//! but handing every *statement* to another thread (what an async driver does)
//! makes a transaction of five statements wait five times for a thread to be
//! scheduled, which on a busy two-core machine cost more than the statements
//! and the disk sync together. Here the unit of hand-off is a whole piece of
//! work: [`SqliteThread::call`] sends one closure, which runs every statement of
//! its transaction synchronously on the owning thread (prepared statements
//! cached there), and answers once. Jobs run one at a time in the order they
//! were sent, so a thread is also the natural place for a database's one
//! writer.
//!
//! [`GroupCommit`] is the one writer's batching, shared by the embedded queue
//! and store: a write joins the writes pending, and the first to find none
//! pending queues one flush job ([`SqliteThread::submit`]), which takes
//! everything pending when it runs into one transaction. So one commit, and
//! one sync to disk, serves whatever arrived while the previous one ran.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

pub use rusqlite;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::oneshot;

/// Errors from the connection thread itself.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the SQLite connection thread {0:?} has stopped")]
    Stopped(String),
    #[error("starting the SQLite connection thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// One job: runs with the connection, on its thread.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// Pages of a writer's cache (`cache_size`, in KiB when negative): enough to
/// keep the leaves a chat's streams append to in memory rather than read them
/// back from the file on every commit.
const WRITER_CACHE_KIB: i64 = 32 * 1024;

/// How a connection is opened.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names the thread (`top` and profiles show it) and errors.
    pub name: String,
    /// Refuses writes (the file must exist).
    pub read_only: bool,
    /// `synchronous=FULL` (every commit on disk before it returns) instead of
    /// `NORMAL` (a commit survives a process crash; the last ones may not
    /// survive a power cut). Write-ahead logging either way.
    pub sync_full: bool,
    /// How long a statement waits for another connection's lock.
    pub busy_timeout: Duration,
}

impl Options {
    /// A read-write connection that syncs every commit.
    pub fn writer(name: impl Into<String>) -> Self {
        Self { name: name.into(), read_only: false, sync_full: true, busy_timeout: Duration::from_secs(10) }
    }

    /// A connection that only reads (it still sees every commit as it lands).
    pub fn reader(name: impl Into<String>) -> Self {
        Self { read_only: true, ..Self::writer(name) }
    }
}

/// A handle on a connection's thread; cheap to clone. The thread ends, closing
/// the connection, when the last handle is dropped and its jobs are done.
#[derive(Debug, Clone)]
pub struct SqliteThread {
    jobs: mpsc::Sender<Job>,
    name: String,
}

impl SqliteThread {
    /// Opens `path` (created if missing, for a writer) on a new thread.
    pub fn open(path: &Path, options: Options) -> Result<Self, Error> {
        let connection = connect(path, &options)?;
        let (jobs, queued) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(options.name.clone()).spawn(move || {
            let mut connection = connection;
            // Ends when every sender is gone. A job that panics is a bug, but
            // it must not take the database away from every later caller.
            while let Ok(job) = queued.recv() {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut connection)));
                if ran.is_err() {
                    tracing::error!(thread = %std::thread::current().name().unwrap_or("sqlite"), "a SQLite job panicked");
                }
            }
        })?;
        Ok(Self { jobs, name: options.name })
    }

    /// Runs `work` with the connection on its thread and returns its result.
    pub async fn call<T, E>(&self, work: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.submit(move |connection| {
            // The caller may have gone away (cancelled); the work is done anyway.
            let _ = reply.send(work(connection));
        })
        .map_err(E::from)?;
        answer.await.map_err(|_| E::from(Error::Stopped(self.name.clone())))?
    }

    /// Queues `work` without waiting for it.
    pub fn submit(&self, work: impl FnOnce(&mut Connection) + Send + 'static) -> Result<(), Error> {
        self.jobs.send(Box::new(work)).map_err(|_| Error::Stopped(self.name.clone()))
    }
}

/// Writes batched onto one writer thread (see the module docs).
pub struct GroupCommit<T> {
    thread: SqliteThread,
    pending: Mutex<Pending<T>>,
    /// Writes one group; runs on the writer thread.
    write: Box<GroupWrite<T>>,
}

/// What writes a group, on the writer thread.
type GroupWrite<T> = dyn Fn(&mut Connection, Vec<T>) + Send + Sync;

/// Writes waiting for the next flush.
struct Pending<T> {
    items: Vec<T>,
    /// Whether a flush job is on the thread's queue, which will take `items`.
    flush_queued: bool,
}

impl<T> std::fmt::Debug for GroupCommit<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("thread", &self.thread).finish_non_exhaustive()
    }
}

impl<T: Send + 'static> GroupCommit<T> {
    /// Groups writes onto `thread`, each group written by `write`.
    pub fn new(thread: SqliteThread, write: impl Fn(&mut Connection, Vec<T>) + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            thread,
            pending: Mutex::new(Pending { items: Vec::new(), flush_queued: false }),
            write: Box::new(write),
        })
    }

    /// Adds `item` to the next group. It is written before any job submitted
    /// to the thread after this returns.
    pub fn push(self: &Arc<Self>, item: T) -> Result<(), Error> {
        let mut pending = self.lock();
        pending.items.push(item);
        if !pending.flush_queued {
            let group = Arc::clone(self);
            self.thread.submit(move |connection| group.flush(connection))?;
            pending.flush_queued = true;
        }
        Ok(())
    }

    /// The writer thread, for work of other kinds.
    pub fn thread(&self) -> &SqliteThread {
        &self.thread
    }

    fn flush(&self, connection: &mut Connection) {
        let items = {
            let mut pending = self.lock();
            pending.flush_queued = false;
            std::mem::take(&mut pending.items)
        };
        if !items.is_empty() {
            (self.write)(connection, items);
        }
    }

    /// A poisoned lock only means a thread panicked holding it; the list it
    /// guards is still whole.
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending<T>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn connect(path: &Path, options: &Options) -> Result<Connection, Error> {
    // A reader opens the file read-write but refuses writes (`query_only`):
    // a read-only open of a write-ahead-logged file needs its shared-memory
    // file to exist already, which a reader started first cannot count on.
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    if !options.read_only {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let connection = Connection::open_with_flags(path, flags)?;
    connection.busy_timeout(options.busy_timeout)?;
    if options.read_only {
        connection.pragma_update(None, "query_only", "ON")?;
    } else {
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", if options.sync_full { "FULL" } else { "NORMAL" })?;
        connection.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    }
    connection.pragma_update(None, "foreign_keys", "ON")?;
    // Enough for every statement of a writer and its readers.
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

/// Whether `error` is SQLite saying "not now" (the database is busy or
/// locked by another connection) rather than anything about the data.
pub fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(error.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_connection_and_readers_see_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let writer = SqliteThread::open(&path, Options::writer("test-writer")).expect("writer");
        writer
            .call(|c| c.execute_batch("CREATE TABLE t (n INTEGER NOT NULL)").map_err(Error::from))
            .await
            .expect("schema");
        // Submitted jobs run before a later call: the call sees all ten rows.
        for n in 0..10 {
            writer
                .submit(move |c| {
                    c.execute("INSERT INTO t (n) VALUES (?1)", [n]).expect("insert");
                })
                .expect("submit");
        }
        let total: i64 = writer
            .call(|c| c.query_row("SELECT SUM(n) FROM t", [], |row| row.get(0)).map_err(Error::from))
            .await
            .expect("sum");
        assert_eq!(total, 45);
        let reader = SqliteThread::open(&path, Options::reader("test-reader")).expect("reader");
        let count: i64 = reader
            .call(|c| c.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0)).map_err(Error::from))
            .await
            .expect("count");
        assert_eq!(count, 10, "a reader sees what the writer committed");
        let refused = reader.call(|c| c.execute("INSERT INTO t (n) VALUES (1)", []).map_err(Error::from)).await;
        assert!(refused.is_err(), "a reader cannot write");
    }

    #[tokio::test]
    async fn a_failed_job_answers_its_caller_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let thread = SqliteThread::open(&dir.path().join("db.sqlite"), Options::writer("test")).expect("open");
        let failed = thread.call(|c| c.execute("INSERT INTO missing VALUES (1)", []).map_err(Error::from)).await;
        assert!(matches!(failed, Err(Error::Sqlite(_))), "{failed:?}");
        let one: i64 =
            thread.call(|c| c.query_row("SELECT 1", [], |row| row.get(0)).map_err(Error::from)).await.expect("select");
        assert_eq!(one, 1);
    }

    #[tokio::test]
    async fn writes_pushed_while_a_flush_runs_share_the_next_group() {
        let dir = tempfile::tempdir().expect("tempdir");
        let thread = SqliteThread::open(&dir.path().join("db.sqlite"), Options::writer("test")).expect("open");
        let (groups_tx, groups) = std::sync::mpsc::channel::<Vec<u32>>();
        let group = GroupCommit::new(thread.clone(), move |_, items: Vec<u32>| {
            let _ = groups_tx.send(items);
        });
        // Hold the thread so the pushes pile up behind one flush job.
        let (release, held) = std::sync::mpsc::channel::<()>();
        thread
            .submit(move |_| {
                let _ = held.recv();
            })
            .expect("submit");
        for n in 0..5 {
            group.push(n).expect("push");
        }
        release.send(()).expect("release");
        // A call queued now runs after the flush: the group is written by then.
        thread.call(|_| Ok::<_, Error>(())).await.expect("barrier");
        assert_eq!(groups.try_recv().expect("one group"), vec![0, 1, 2, 3, 4]);
        assert!(groups.try_recv().is_err(), "all five in one group");
        group.push(5).expect("push");
        thread.call(|_| Ok::<_, Error>(())).await.expect("barrier");
        assert_eq!(groups.try_recv().expect("a second group"), vec![5]);
    }
}
