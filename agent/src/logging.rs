//! Where log lines go and which ones: `tracing` events, filtered by
//! [`FILTER_VAR`] (`RUST_LOG` syntax, default `info`), sent to journald
//! when stderr is the journal (a systemd service) and to stderr otherwise,
//! one line each: `pincg: message`, `pincg: warning: message`,
//! `pincg: error: message`.
//!
//! A problem that recurs every round is logged through [`report`]: once,
//! then once per [`REPEAT_WINDOW`] with the count of its repeats.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The filter's environment variable. Not `RUST_LOG`: a value meant for
/// another program in the same environment must not change pincg's log.
pub const FILTER_VAR: &str = "PINCG_LOG";
const DEFAULT_FILTER: &str = "info";

/// How long repeats of one problem are counted before the next line.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Install the subscriber, once, before anything logs.
pub fn init() {
    let (filter, refused) = filter(&std::env::var(FILTER_VAR).unwrap_or_default());
    let (journald, no_journald) = if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                (Some(layer.with_syslog_identifier("pincg".into()).with_priority_mappings(priorities())), None)
            }
            Err(e) => (None, Some(format!("stderr is the journal, but its socket refused: {e}; logging to stderr"))),
        }
    } else {
        (None, None)
    };
    let stderr = journald
        .is_none()
        .then(|| tracing_subscriber::fmt::layer().event_format(Line).with_ansi(false).with_writer(std::io::stderr));
    tracing_subscriber::registry().with(filter).with(journald).with(stderr).init();
    for problem in refused.iter().chain(&no_journald) {
        tracing::warn!("{problem}");
    }
}

/// The filter `value` (of [`FILTER_VAR`]) sets, or the default and why.
fn filter(value: &str) -> (EnvFilter, Option<String>) {
    match EnvFilter::try_new(value) {
        Ok(filter) if !value.trim().is_empty() => (filter, None),
        Ok(_) => (EnvFilter::new(DEFAULT_FILTER), None),
        Err(e) => {
            (EnvFilter::new(DEFAULT_FILTER), Some(format!("{FILTER_VAR}={value:?}: {e}; logging at {DEFAULT_FILTER}")))
        }
    }
}

/// systemd's mapping: info is "informational" (6), not "notice" (5).
fn priorities() -> tracing_journald::PriorityMappings {
    use tracing_journald::Priority;
    tracing_journald::PriorityMappings {
        error: Priority::Error,
        warn: Priority::Warning,
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
    }
}

/// `JOURNAL_STREAM` names the journal's stream as `device:inode`; it is
/// inherited by children whose stderr was redirected, so the device and
/// inode of stderr itself must match (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into the stat buffer it is given.
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    names_stream(&stream, st.st_dev, st.st_ino)
}

fn names_stream(journal_stream: &str, dev: u64, ino: u64) -> bool {
    journal_stream.split_once(':').and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// One line per event: `pincg: [level: ]message fields`.
struct Line;

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::INFO => "",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
        };
        let mut message = String::new();
        ctx.field_format().format_fields(Writer::new(&mut message), event)?;
        writeln!(writer, "pincg: {level}{}", one_line(&message))
    }
}

/// `text` with its control characters escaped (`\n`, `\u{1b}`): a cgroup
/// name or a tenant's value with a newline or a terminal escape in it
/// cannot start a line of its own nor drive the reader's terminal.
fn one_line(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Log `message` at `level` unless it was already logged in the current
/// window; then it is only counted. [`flush_repeats`] writes the counts.
pub fn report(level: Level, message: String) {
    if repeats().note(level, &message, Instant::now()) {
        emit(level, &message);
    }
}

/// Write one line per problem whose window ended with repeats: call it
/// regularly (the agent does, every round).
pub fn flush_repeats() {
    let due = repeats().due(Instant::now());
    for (level, line) in due {
        emit(level, &line);
    }
}

fn repeats() -> std::sync::MutexGuard<'static, Repeats> {
    static REPEATS: Mutex<Repeats> = Mutex::new(Repeats::new(REPEAT_WINDOW));
    // A panic while counting leaves nothing half-updated worth refusing.
    REPEATS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// An error and its causes, `: `-separated, as anyhow's `{:#}` prints them
/// at the edge: for a line logged where the error is not an anyhow one.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        line.push_str(&format!(": {e}"));
        cause = e.source();
    }
    line
}

/// `tracing`'s macros take the level as a constant.
fn emit(level: Level, line: &str) {
    match level {
        Level::ERROR => tracing::error!("{line}"),
        Level::WARN => tracing::warn!("{line}"),
        Level::INFO => tracing::info!("{line}"),
        Level::DEBUG => tracing::debug!("{line}"),
        Level::TRACE => tracing::trace!("{line}"),
    }
}

/// Which problems were logged in their current window, and how often they
/// came back since. There can be many (one per cgroup whose limit the full
/// `limits` map refuses): looked up by message. Memory is bounded by the
/// distinct problems of one window: an entry lives one window after its
/// problem stops.
pub struct Repeats {
    window: Duration,
    seen: BTreeMap<String, Seen>,
}

struct Seen {
    level: Level,
    since: Instant,
    repeated: u64,
}

impl Repeats {
    pub const fn new(window: Duration) -> Repeats {
        Repeats { window, seen: BTreeMap::new() }
    }

    /// Whether `message` is to be logged now (the first time in a window).
    pub fn note(&mut self, level: Level, message: &str, now: Instant) -> bool {
        match self.seen.get_mut(message) {
            Some(seen) => {
                seen.repeated += 1;
                false
            }
            None => {
                self.seen.insert(message.to_string(), Seen { level, since: now, repeated: 0 });
                true
            }
        }
    }

    /// The summaries of the windows ended by `now`, by message. A problem
    /// that repeated starts a new window (its repeats keep being counted);
    /// one that did not is forgotten, so it is logged in full when it
    /// comes back.
    pub fn due(&mut self, now: Instant) -> Vec<(Level, String)> {
        let window = self.window;
        let mut lines = Vec::new();
        self.seen.retain(|message, seen| {
            if now.saturating_duration_since(seen.since) < window {
                return true;
            }
            if seen.repeated == 0 {
                return false;
            }
            lines.push((
                seen.level,
                format!(
                    "{message} (repeated {} time{} in the last {} s)",
                    seen.repeated,
                    if seen.repeated == 1 { "" } else { "s" },
                    window.as_secs()
                ),
            ));
            *seen = Seen { level: seen.level, since: now, repeated: 0 };
            true
        });
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_name_cannot_forge_a_line_nor_drive_a_terminal() {
        assert_eq!(one_line("/sys/fs/cgroup/vm: max 1"), "/sys/fs/cgroup/vm: max 1");
        assert_eq!(
            one_line("/sys/fs/cgroup/x\npincg: error: forged\u{1b}[2J"),
            "/sys/fs/cgroup/x\\npincg: error: forged\\u{1b}[2J"
        );
    }

    #[test]
    fn a_problem_is_logged_once_per_window_with_the_count_of_its_repeats() {
        let t0 = Instant::now();
        let mut r = Repeats::new(60 * S);
        let lost = "reading the cgroup tree at /sys/fs/cgroup: Too many open files (os error 24)";
        assert!(r.note(Level::ERROR, lost, t0), "the first occurrence is logged");
        for i in 1..=599u32 {
            assert!(!r.note(Level::ERROR, lost, t0 + i * S / 10), "repeat {i} within the window is counted");
        }
        assert!(r.note(Level::WARN, "hook vfio: gone", t0 + 30 * S), "another problem is logged at once");
        assert_eq!(r.due(t0 + 59 * S), vec![], "no window has ended yet");
        assert_eq!(r.due(t0 + 60 * S), vec![(Level::ERROR, format!("{lost} (repeated 599 times in the last 60 s)"))]);
        assert!(!r.note(Level::ERROR, lost, t0 + 61 * S), "still repeating: counted in the new window");
        assert_eq!(r.due(t0 + 90 * S), vec![], "the vfio line had no repeats: forgotten, nothing to say");
        assert!(r.note(Level::WARN, "hook vfio: gone", t0 + 91 * S), "so it is logged in full when it comes back");
        assert_eq!(r.due(t0 + 120 * S), vec![(Level::ERROR, format!("{lost} (repeated 1 time in the last 60 s)"))]);
        assert_eq!(r.due(t0 + 180 * S), vec![], "a window without repeats ends silently");
        assert!(r.note(Level::ERROR, lost, t0 + 181 * S), "and the problem is new again");
    }

    #[test]
    fn a_chain_is_printed_as_at_the_edge() {
        #[derive(Debug, thiserror::Error)]
        #[error("pinned BPF state limits")]
        struct Pinned {
            source: std::io::Error,
        }
        let e = || Pinned { source: std::io::Error::from_raw_os_error(libc::E2BIG) };
        assert_eq!(chain(&e()), "pinned BPF state limits: Argument list too long (os error 7)");
        assert_eq!(chain(&e()), format!("{:#}", anyhow::Error::new(e())));
    }

    #[test]
    fn the_filter_comes_from_pincg_log_or_is_info() {
        let shown = |value: &str| {
            let (filter, refused) = filter(value);
            (filter.to_string(), refused)
        };
        assert_eq!(shown(""), ("info".into(), None));
        assert_eq!(shown("warn"), ("warn".into(), None));
        assert_eq!(shown("info,pincg::http=debug"), ("pincg::http=debug,info".into(), None));
        let (used, refused) = shown("pincg=loud");
        assert_eq!(used, "info");
        let refused = refused.expect("a bad value is reported");
        assert!(
            refused.starts_with("PINCG_LOG=\"pincg=loud\": ") && refused.ends_with("; logging at info"),
            "{refused}"
        );
    }

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(names_stream("8:1234", 8, 1234));
        assert!(!names_stream("8:1234", 8, 1235), "a child whose stderr was redirected inherits the variable");
        assert!(!names_stream("garbage", 8, 1234));
        assert!(!names_stream("", 0, 0));
    }
}
