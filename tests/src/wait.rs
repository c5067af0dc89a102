//! Bounded waits for what a test needs, with a failure that says what was awaited and what
//! was last seen.
//!
//! The rule of the suite: a test never reads a screen, a console or a log once right after a
//! marker and expects the rest to be there (a guest, a VM process or an emulated machine
//! writes at its own pace, and on a loaded machine the rest comes later). It waits, with a
//! bound, for exactly what it needs. A log whose writer has ended (the VM process is gone) is
//! complete and may be read once.
//!
//! Scripts inside the nested rig have the same in shell: [`crate::rig::WAIT_FOR_SH`].

use std::path::Path;
use std::time::{Duration, Instant};

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(20);

/// How much of a text a failure shows: its end.
const SHOWN_CHARS: usize = 2000;

/// Calls `probe` until it gives `Ok`, for at most `timeout`, and returns what it gave. A probe
/// that is not done yet says what it sees instead (`Err`); when the time is up the test fails
/// with `what` and the last of those.
#[track_caller]
pub fn poll<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        let seen = match probe() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        if started.elapsed() >= timeout {
            panic!(
                "timed out after {:.1} s waiting for {what}; last seen: {seen}",
                started.elapsed().as_secs_f64()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `check` holds, for at most `timeout`; fails the test with `what` otherwise.
#[track_caller]
pub fn until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    poll(what, timeout, || {
        if check() {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
}

/// Waits until the file at `path` (a serial or VM log, say) contains every one of `needles`,
/// for at most `timeout`, and returns its text then. The failure names the missing ones and
/// shows the end of the file.
#[track_caller]
pub fn for_text(path: &Path, needles: &[&str], timeout: Duration) -> String {
    let what = format!("{} in {}", quoted(needles), path.display());
    poll(&what, timeout, || {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        match missing(&text, needles) {
            None => Ok(text),
            Some(absent) => Err(format!(
                "no {}; the file ends with:\n{}",
                quoted(&absent),
                tail(&text)
            )),
        }
    })
}

/// The needles that `text` does not contain, or `None` when it has them all.
pub fn missing<'a>(text: &str, needles: &[&'a str]) -> Option<Vec<&'a str>> {
    let absent: Vec<&str> = needles
        .iter()
        .copied()
        .filter(|needle| !text.contains(needle))
        .collect();
    (!absent.is_empty()).then_some(absent)
}

/// The end of `text`, at most [`SHOWN_CHARS`] characters, with control characters (a
/// terminal's escape sequences) made visible, for a failure message.
pub fn tail(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let start = chars.len().saturating_sub(SHOWN_CHARS);
    let mut shown = String::new();
    if start > 0 {
        shown.push_str("[...]");
    }
    for &c in &chars[start..] {
        match c {
            '\n' | '\t' => shown.push(c),
            '\r' => {}
            c if c.is_control() => shown.push_str(&c.escape_default().to_string()),
            c => shown.push(c),
        }
    }
    shown
}

fn quoted(needles: &[&str]) -> String {
    needles
        .iter()
        .map(|n| format!("{:?}", n.trim()))
        .collect::<Vec<_>>()
        .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_returns_what_the_probe_gives_once_it_is_done() {
        let mut calls = 0;
        let value = poll("the third call", Duration::from_secs(5), || {
            calls += 1;
            if calls == 3 {
                Ok(calls)
            } else {
                Err(format!("call {calls}"))
            }
        });
        assert_eq!(value, 3);
    }

    #[test]
    fn a_wait_that_times_out_says_what_it_awaited_and_what_it_saw() {
        let failure = std::panic::catch_unwind(|| {
            poll::<()>("the moon", Duration::from_millis(50), || {
                Err("only stars".to_string())
            })
        })
        .expect_err("the wait times out");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("waiting for the moon"), "{message}");
        assert!(message.contains("last seen: only stars"), "{message}");
    }

    #[test]
    fn for_text_waits_for_every_needle_and_shows_the_end_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("serial.log");
        std::fs::write(&log, "boot\r\nREADY\r\n").unwrap();
        let writer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::fs::write(&log, "boot\r\nREADY\r\nthe rest\r\n").unwrap();
            })
        };
        let text = for_text(&log, &["READY", "the rest"], Duration::from_secs(10));
        assert!(text.ends_with("the rest\r\n"));
        writer.join().unwrap();

        let failure = std::panic::catch_unwind(|| {
            for_text(&log, &["READY", "never"], Duration::from_millis(50))
        })
        .expect_err("the wait times out");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("no \"never\""), "{message}");
        assert!(message.contains("the rest"), "{message}");
    }

    #[test]
    fn the_tail_is_the_end_with_escapes_visible() {
        assert_eq!(tail("a\x1b[2Jb\r\nc"), "a\\u{1b}[2Jb\nc");
        let long = "x".repeat(SHOWN_CHARS + 10);
        assert_eq!(tail(&long).len(), SHOWN_CHARS + "[...]".len());
        assert_eq!(missing("abc", &["a", "z"]), Some(vec!["z"]));
        assert_eq!(missing("abc", &["a", "c"]), None);
    }
}
