//! Logs: human-readable text or one JSON object per line (`--log-format json`). Level from
//! `RUST_LOG` (default `info`). Secrets (connection strings, store passwords) are never passed
//! to the logger.
//!
//! Each request is logged once by [`access`], as target `tenantgate::access` (turn it off with
//! `RUST_LOG=info,tenantgate::access=off`). The access line is formatted here directly, in the
//! same shape as the tracing lines around it, because it is written on every request: through
//! the generic tracing formatter it cost about as much CPU as the tenancy logic itself.
//!
//! Lines are appended to an in-memory batch and written to stdout by a background thread every
//! [`FLUSH_EVERY`] (or as soon as a batch is large); access lines first gather per thread, so a
//! line may wait up to twice that, and may come out after a later warning of the same thread. A
//! request never waits on stdout and never wakes another thread: measured on the bench workload, a per-line hand-off to a writer thread
//! (tracing-appender) cost more CPU than the whole tenancy logic. If stdout stalls for long
//! enough that [`MAX_PENDING`] bytes are waiting, further lines are dropped and counted, and the
//! count is reported once stdout moves again.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How long a log line may wait before it is written.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A batch this large is written at once.
const FLUSH_SIZE: usize = 64 * 1024;
/// Lines beyond this many waiting bytes are dropped (stdout is not keeping up).
pub const MAX_PENDING: usize = 8 * 1024 * 1024;
/// Written buffers kept for reuse.
const SPARE_CHUNKS: usize = 8;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Default)]
pub(crate) struct Batch {
    pending: Mutex<Pending>,
    wake: Condvar,
    dropped: AtomicU64,
}

/// The lines waiting for stdout, in chunks of [`FLUSH_SIZE`] bytes: memory grows a chunk at a
/// time with what is waiting (one growing buffer doubled, so a burst cost up to twice its size
/// and a copy of everything so far), and written chunks are reused.
#[derive(Default)]
struct Pending {
    chunks: Vec<Vec<u8>>,
    bytes: usize,
    /// Emptied chunks, kept for reuse (a few).
    spare: Vec<Vec<u8>>,
    closing: bool,
}

impl Pending {
    fn push(&mut self, line: &[u8]) {
        let room = self.chunks.last().map_or(0, |c| c.capacity() - c.len());
        if room < line.len() {
            let chunk = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(FLUSH_SIZE.max(line.len())));
            self.chunks.push(chunk);
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.extend_from_slice(line);
        }
        self.bytes += line.len();
    }
}

impl Batch {
    /// Adds lines for the writer thread (or counts them as dropped when too much is waiting).
    fn append(&self, lines: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.bytes + lines.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            let before = pending.bytes;
            pending.push(lines);
            self.wake_if_full(before, pending.bytes);
        }
    }

    /// Adds a thread's block of lines as it is (no copy) and gives back an empty buffer for the
    /// next block: a written one when there is one.
    fn append_block(&self, mut block: Vec<u8>) -> Vec<u8> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.bytes + block.len() > MAX_PENDING {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            block.clear();
            return block;
        }
        let before = pending.bytes;
        pending.bytes += block.len();
        pending.chunks.push(block);
        self.wake_if_full(before, pending.bytes);
        pending.spare.pop().unwrap_or_default()
    }

    /// Wakes the writer once per full batch (a notify is a syscall), never per line.
    fn wake_if_full(&self, before: usize, now: usize) {
        if before < FLUSH_SIZE && now >= FLUSH_SIZE {
            self.wake.notify_one();
        }
    }
}

/// Appends each formatted line to the shared batch.
#[derive(Clone)]
pub struct BatchWriter(Arc<Batch>);

impl Write for BatchWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.append(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = BatchWriter;
    fn make_writer(&'a self) -> BatchWriter {
        self.clone()
    }
}

/// Writes what is left when dropped; keep it alive until exit.
pub struct LogGuard {
    batch: Arc<Batch>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        flush_thread();
        self.batch
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closing = true;
        self.batch.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One turn of the writer thread: wait up to [`FLUSH_EVERY`] (less when a batch fills up or
/// the guard is dropped), then write everything pending. Returns true when it is time to stop.
fn write_out(batch: &Batch) -> bool {
    let (mut chunks, closing) = {
        let mut pending = batch.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.closing && pending.bytes < FLUSH_SIZE {
            pending = batch
                .wake
                .wait_timeout(pending, FLUSH_EVERY)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        pending.bytes = 0;
        (std::mem::take(&mut pending.chunks), pending.closing)
    };
    let mut out = std::io::stdout().lock();
    for chunk in &chunks {
        let _ = out.write_all(chunk);
    }
    let dropped = batch.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        let _ = writeln!(
            out,
            "tenantgate: {dropped} log lines dropped: stdout was not keeping up"
        );
    }
    let _ = out.flush();
    drop(out);
    // Back for reuse (shared batch chunks and threads' blocks alike): a few, none oversized.
    chunks.retain(|c| c.capacity() <= FLUSH_SIZE);
    chunks.truncate(SPARE_CHUNKS);
    chunks.iter_mut().for_each(Vec::clear);
    let mut pending = batch.pending.lock().unwrap_or_else(|p| p.into_inner());
    let room = SPARE_CHUNKS.saturating_sub(pending.spare.len());
    pending.spare.extend(chunks.into_iter().take(room));
    closing
}

/// One request, as logged.
/// `method`, `status`, `code`, `latency_us` and `trace_id` never need escaping and are written
/// as they are; `path`, `tenant` and `request_id` are escaped when needed.
pub struct AccessRecord<'a> {
    /// An HTTP method token.
    pub method: &'a str,
    /// Path only: query strings may carry secrets.
    pub path: &'a str,
    pub status: u16,
    pub tenant: &'a str,
    /// The rejection code, `-` for forwarded requests.
    pub code: &'a str,
    pub latency_us: u64,
    pub request_id: &'a str,
    /// 32 hex digits ([`crate::telemetry::trace`]) or `-`: written without escaping.
    pub trace_id: &'a str,
}

struct AccessLog {
    batch: Arc<Batch>,
    json: bool,
}

static ACCESS: OnceLock<AccessLog> = OnceLock::new();

/// Logs one request (when the access log is enabled): the line is written straight into this
/// thread's block of lines ([`LocalLines`]).
pub fn access(r: &AccessRecord<'_>) {
    let Some(log) = ACCESS.get() else {
        // No logger installed by `init` (library use, tests): hand it to tracing.
        tracing::info!(target: "tenantgate::access", method = r.method, path = r.path, status = r.status,
            tenant = r.tenant, code = r.code, latency_us = r.latency_us, request_id = r.request_id, trace_id = r.trace_id);
        return;
    };
    gather(&log.batch, |line| write_access_line(line, r, log.json));
}

/// Appends what `write` writes to this thread's block of lines, handing the block over when it
/// is full (or, on a thread that is exiting, straight to the batch).
fn gather(batch: &Arc<Batch>, write: impl Fn(&mut Vec<u8>)) {
    let buffered = LOCAL.try_with(|local| {
        let mut local = local.borrow_mut();
        if local.batch.is_none() {
            local.batch = Some(batch.clone());
            local.lines.reserve(LOCAL_BLOCK);
        }
        write(&mut local.lines);
        if local.lines.len() >= LOCAL_BLOCK {
            local.hand_over();
        }
    });
    if buffered.is_err() {
        let mut line = Vec::with_capacity(256);
        write(&mut line);
        batch.append(&line);
    }
}

/// Appends one access line, text (`key=value`, as tracing's formatter writes them) or JSON.
/// The fixed parts between the values are written whole ([`TEXT`], [`JSON`]); only the values
/// that can need escaping (path, tenant, request id) are checked.
fn write_access_line(line: &mut Vec<u8>, r: &AccessRecord<'_>, json: bool) {
    let mut ts = [0u8; 27];
    let ts = rfc3339_micros(std::time::SystemTime::now(), &mut ts);
    let (mut status, mut latency) = (itoa::Buffer::new(), itoa::Buffer::new());
    let (seps, escaped): (&Separators, Escape) = if json {
        (&JSON, json_escaped)
    } else {
        (&TEXT, text_escaped)
    };
    line.extend_from_slice(seps[0]);
    line.extend_from_slice(ts);
    line.extend_from_slice(seps[1]);
    line.extend_from_slice(r.method.as_bytes());
    line.extend_from_slice(seps[2]);
    escaped(line, r.path);
    line.extend_from_slice(seps[3]);
    line.extend_from_slice(status.format(r.status).as_bytes());
    line.extend_from_slice(seps[4]);
    escaped(line, r.tenant);
    line.extend_from_slice(seps[5]);
    line.extend_from_slice(r.code.as_bytes());
    line.extend_from_slice(seps[6]);
    line.extend_from_slice(latency.format(r.latency_us).as_bytes());
    line.extend_from_slice(seps[7]);
    escaped(line, r.request_id);
    line.extend_from_slice(seps[8]);
    line.extend_from_slice(r.trace_id.as_bytes());
    line.extend_from_slice(seps[9]);
}

/// The fixed parts of an access line, before, between and after its values.
type Separators = [&'static [u8]; 10];
/// Writes a value that may need escaping.
type Escape = fn(&mut Vec<u8>, &str);

/// What goes around the values of a text access line.
const TEXT: Separators = [
    b"",
    b"  INFO tenantgate::access: method=",
    b" path=\"",
    b"\" status=",
    b" tenant=\"",
    b"\" code=\"",
    b"\" latency_us=",
    b" request_id=\"",
    b"\" trace_id=\"",
    b"\"\n",
];

/// What goes around the values of a JSON access line.
const JSON: Separators = [
    b"{\"timestamp\":\"",
    b"\",\"level\":\"INFO\",\"method\":\"",
    b"\",\"path\":\"",
    b"\",\"status\":",
    b",\"tenant\":\"",
    b"\",\"code\":\"",
    b"\",\"latency_us\":",
    b",\"request_id\":\"",
    b"\",\"trace_id\":\"",
    b"\",\"target\":\"tenantgate::access\"}\n",
];

/// Access lines gathered by one thread before they go to the shared batch together.
const LOCAL_BLOCK: usize = 16 * 1024;

thread_local! {
    static LOCAL: std::cell::RefCell<LocalLines> = const {
        std::cell::RefCell::new(LocalLines { lines: Vec::new(), batch: None })
    };
}

/// A thread's access lines on their way to the batch. With several connection threads, taking
/// the batch's lock once per line made them contend for it on every request: measured on 16
/// cores, the access log then tripled p99 latency. Handed over a block at a time, every
/// [`FLUSH_EVERY`] by [`flush_thread`], and when the thread ends.
struct LocalLines {
    lines: Vec<u8>,
    batch: Option<Arc<Batch>>,
}

impl LocalLines {
    fn hand_over(&mut self) {
        if let Some(batch) = &self.batch {
            if !self.lines.is_empty() {
                self.lines = batch.append_block(std::mem::take(&mut self.lines));
                self.lines.reserve(LOCAL_BLOCK);
            }
        }
    }
}

impl Drop for LocalLines {
    fn drop(&mut self) {
        self.hand_over();
    }
}

/// Hands the access lines this thread has gathered to the writer. Each runtime thread that
/// serves requests calls it every [`FLUSH_EVERY`]; [`LogGuard`] calls it at exit.
pub fn flush_thread() {
    let _ = LOCAL.try_with(|local| local.borrow_mut().hand_over());
}

/// Whether `v` goes between quotes as it is, in text and in JSON: printable ASCII other than
/// `"` and `\`. Eight bytes at a time (this runs on three fields of every access line).
fn is_plain(v: &str) -> bool {
    let bytes = v.as_bytes();
    let mut words = bytes.chunks_exact(8);
    for chunk in &mut words {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if !plain_word(u64::from_le_bytes(word)) {
            return false;
        }
    }
    // The last few bytes as one more word, padded with a plain byte.
    let mut last = [b'a'; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    plain_word(u64::from_le_bytes(last))
}

/// [`is_plain`] for eight bytes: none below `0x20` or above `0x7e`, none `"` or `\` (the
/// usual bit tricks: a byte's top bit set where the test holds).
fn plain_word(w: u64) -> bool {
    const fn each(b: u8) -> u64 {
        u64::from_ne_bytes([b; 8])
    }
    const HIGH: u64 = each(0x80);
    let below = |x: u64, n: u8| x.wrapping_sub(each(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    let above_tilde = (w.wrapping_add(each(1)) | w) & HIGH;
    below(w, 0x20) | above_tilde | zero(w ^ each(b'"')) | zero(w ^ each(b'\\')) == 0
}

/// The inside of a JSON string (escaped as JSON requires).
fn json_escaped(line: &mut Vec<u8>, v: &str) {
    if is_plain(v) {
        line.extend_from_slice(v.as_bytes());
    } else {
        let quoted = serde_json::Value::from(v).to_string();
        line.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

/// The inside of a quoted string as `{:?}` writes it (as is when nothing needs escaping, the
/// common case).
fn text_escaped(line: &mut Vec<u8>, v: &str) {
    if is_plain(v) {
        line.extend_from_slice(v.as_bytes());
    } else {
        let quoted = format!("{v:?}");
        line.extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
    }
}

/// `2026-11-28T17:46:23.613195Z` (UTC, microseconds) into `buf`.
fn rfc3339_micros(t: std::time::SystemTime, buf: &mut [u8; 27]) -> &[u8] {
    use std::cell::Cell;
    thread_local! {
        /// The second last formatted on this thread, `YYYY-MM-DDTHH:MM:SS.`.
        static SECOND: Cell<(u64, [u8; 20])> = const { Cell::new((u64::MAX, [0; 20])) };
    }
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let put = |buf: &mut [u8; 27], at: usize, width: usize, mut v: u64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    let (at, second) = SECOND.get();
    if at == d.as_secs() {
        buf[..20].copy_from_slice(&second);
    } else {
        let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = yoe + era * 400 + i64::from(month <= 2);
        // Digits by hand: `write!` costs ~2k instructions here.
        put(buf, 0, 4, year as u64);
        put(buf, 5, 2, month as u64);
        put(buf, 8, 2, day as u64);
        put(buf, 11, 2, secs / 3600);
        put(buf, 14, 2, secs / 60 % 60);
        put(buf, 17, 2, secs % 60);
        for (at, sep) in [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
        ] {
            buf[at] = sep;
        }
        let mut second = [0u8; 20];
        second.copy_from_slice(&buf[..20]);
        SECOND.set((d.as_secs(), second));
    }
    put(buf, 20, 6, u64::from(d.subsec_micros()));
    buf[26] = b'Z';
    buf
}

/// Installs the global logger.
pub fn init(format: LogFormat) -> LogGuard {
    let batch = Arc::new(Batch::default());
    let writer = BatchWriter(batch.clone());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    if tracing::enabled!(target: "tenantgate::access", tracing::Level::INFO) {
        let _ = ACCESS.set(AccessLog {
            batch: batch.clone(),
            json: format == LogFormat::Json,
        });
    }
    let b = batch.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            yield_to_requests();
            while !write_out(&b) {}
        })
        .ok();
    LogGuard { batch, thread }
}

/// The nice value of the writer thread: writing logs is background work, and when the cores
/// are busy it should not preempt the threads that serve requests (at 10 the scheduler gives
/// it about a tenth of a busy core's share, still far more than it needs: writing a line costs
/// well under a microsecond).
#[cfg(target_os = "linux")]
const WRITER_NICENESS: i32 = 10;

/// Lowers the calling thread's priority to [`WRITER_NICENESS`] (Linux: `setpriority` on a
/// thread id changes that thread only). Best effort: left as it is if refused.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        let me = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(me)).unwrap_or(0);
        if let Err(e) = rustix::process::setpriority_process(Some(me), current.max(WRITER_NICENESS))
        {
            tracing::warn!(error = %e, "the log writer keeps its priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_gather_per_thread_and_reach_the_batch_in_blocks_on_flush_and_at_exit() {
        let batch = Arc::new(Batch::default());
        let b = batch.clone();
        std::thread::spawn(move || {
            let waiting = || b.pending.lock().unwrap().bytes;
            gather(&b, |l| l.extend_from_slice(b"one\n"));
            assert_eq!(waiting(), 0, "gathered on the thread");
            flush_thread();
            assert_eq!(waiting(), 4);
            let line = [b'x'; 1000];
            for _ in 0..LOCAL_BLOCK / 1000 {
                gather(&b, |l| l.extend_from_slice(&line));
            }
            assert_eq!(waiting(), 4, "below a block: still on the thread");
            gather(&b, |l| l.extend_from_slice(&line));
            assert_eq!(
                waiting(),
                4 + (LOCAL_BLOCK / 1000 + 1) * 1000,
                "a full block goes at once"
            );
            gather(&b, |l| l.extend_from_slice(b"two\n"));
        })
        .join()
        .unwrap();
        let p = batch.pending.lock().unwrap();
        let all = p.chunks.concat();
        assert!(all.starts_with(b"one\nxxx"));
        assert!(all.ends_with(b"xtwo\n"));
        assert_eq!(
            p.bytes,
            4 + (LOCAL_BLOCK / 1000 + 1) * 1000 + 4,
            "the rest handed over at thread exit"
        );
    }

    #[test]
    fn a_block_is_handed_over_without_a_copy_and_a_written_buffer_comes_back() {
        let batch = Batch::default();
        let block = b"one\n".to_vec();
        let at = block.as_ptr();
        let back = batch.append_block(block);
        assert!(back.is_empty());
        {
            let mut p = batch.pending.lock().unwrap();
            assert_eq!((p.chunks.len(), p.bytes), (1, 4));
            assert_eq!(p.chunks[0].as_ptr(), at, "the same buffer, not a copy");
            p.spare.push(Vec::with_capacity(100)); // as the writer leaves one
        }
        assert_eq!(batch.append_block(b"two\n".to_vec()).capacity(), 100);
        // Too much waiting: the block is dropped, counted, and its buffer comes straight back.
        batch.pending.lock().unwrap().bytes = MAX_PENDING;
        let block = b"three\n".to_vec();
        let at = block.as_ptr();
        let back = batch.append_block(block);
        assert!(back.is_empty() && back.as_ptr() == at);
        assert_eq!(batch.dropped.load(Ordering::Relaxed), 1);
        assert_eq!(batch.pending.lock().unwrap().chunks.len(), 2);
    }

    #[test]
    fn pending_lines_fill_fixed_chunks_in_order() {
        let mut p = Pending::default();
        let line = [b'x'; 1000];
        for _ in 0..200 {
            p.push(&line);
        }
        p.push(&vec![b'y'; FLUSH_SIZE + 1]); // longer than a chunk: a chunk of its own
        p.push(b"z\n");
        assert_eq!(p.bytes, 200 * 1000 + FLUSH_SIZE + 1 + 2);
        let sizes: Vec<usize> = p.chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, [65_000, 65_000, 65_000, 5_000, FLUSH_SIZE + 1, 2]);
        assert!(p.chunks.iter().all(|c| c.capacity() >= c.len()));
        let all: Vec<u8> = p.chunks.concat();
        assert!(all.starts_with(&line) && all.ends_with(b"yz\n"));
    }

    #[test]
    fn access_lines_are_whole_and_escape_only_what_needs_it() {
        let record = |path, request_id| AccessRecord {
            method: "GET",
            path,
            status: 200,
            tenant: "tnt_a",
            code: "-",
            latency_us: 1234,
            request_id,
            trace_id: "0af7651916cd43dd8448eb211c80319c",
        };
        let mut line = Vec::new();
        write_access_line(&mut line, &record("/plain", "id-1"), false);
        let text = String::from_utf8(line).unwrap();
        assert_eq!(
            &text[27..],
            "  INFO tenantgate::access: method=GET path=\"/plain\" status=200 tenant=\"tnt_a\" \
             code=\"-\" latency_us=1234 request_id=\"id-1\" trace_id=\"0af7651916cd43dd8448eb211c80319c\"\n"
        );
        let mut line = Vec::new();
        write_access_line(&mut line, &record("/a\"b\tc", "x\\y"), false);
        let text = String::from_utf8(line).unwrap();
        assert!(text.contains(r#" path="/a\"b\tc" "#), "{text}");
        assert!(text.contains(r#" request_id="x\\y" "#), "{text}");

        let mut line = Vec::new();
        write_access_line(&mut line, &record("/a\"b\tc", "x\\y"), true);
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["path"], "/a\"b\tc");
        assert_eq!(v["request_id"], "x\\y");
        assert_eq!(
            (v["status"].as_u64(), v["latency_us"].as_u64()),
            (Some(200), Some(1234))
        );
        assert_eq!(v["method"], "GET");
        assert_eq!(v["target"], "tenantgate::access");
        assert_eq!(v["level"], "INFO");
        assert!(line.ends_with(b"}\n"));
    }

    #[test]
    fn plain_values_are_told_apart_eight_bytes_at_a_time_as_byte_by_byte() {
        let naive = |v: &[u8]| {
            v.iter()
                .all(|&b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
        };
        for len in 1..=17 {
            for b in 0..=255u8 {
                for at in 0..len {
                    let mut v = vec![b'a'; len];
                    v[at] = b;
                    if let Ok(text) = std::str::from_utf8(&v) {
                        assert_eq!(is_plain(text), naive(&v), "byte {b:#x} at {at} of {len}");
                    }
                }
            }
        }
        assert!(is_plain(""));
        assert!(is_plain("/api/messages?x=1&y=-_.~"));
        assert!(!is_plain("caf\u{e9}"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_thread_alone_yields_to_the_request_threads() {
        use rustix::process::getpriority_process;
        let main = getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let writer = std::thread::spawn(|| {
            yield_to_requests();
            getpriority_process(Some(rustix::thread::gettid())).unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(writer, main.max(WRITER_NICENESS));
        assert_eq!(
            getpriority_process(Some(rustix::thread::gettid())).unwrap(),
            main
        );
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut buf = [0u8; 27];
        let t = std::time::UNIX_EPOCH + Duration::from_micros(1_795_887_983_613_195);
        assert_eq!(rfc3339_micros(t, &mut buf), b"2026-11-28T17:46:23.613195Z");
        // The same second again comes from the thread's copy of its date and time.
        let mut other = [0u8; 27];
        let later = t + Duration::from_micros(386_000);
        assert_eq!(
            rfc3339_micros(later, &mut other),
            b"2026-11-28T17:46:23.999195Z"
        );
        let next = later + Duration::from_micros(1_000);
        assert_eq!(
            rfc3339_micros(next, &mut buf),
            b"2026-11-28T17:46:24.000195Z"
        );
        let t = std::time::UNIX_EPOCH + Duration::from_secs(951_782_400); // a leap day
        assert_eq!(rfc3339_micros(t, &mut buf), b"2000-02-29T00:00:00.000000Z");
    }
}
