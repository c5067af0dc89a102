//! `vivarium console NAME`: this terminal on a running VM's serial console.
//!
//! On a terminal, standard input is put in raw mode (every key goes to the guest, Ctrl-C
//! included) and Ctrl-] detaches; the terminal's settings are restored on every way out
//! (detach, the VM stopping, SIGTERM/SIGHUP, an error, a panic). When standard input is not
//! a terminal (a pipe or a file), it is sent to the guest as it comes, and the command ends
//! once it has ended and the guest has been quiet for [`QUIET_AFTER_INPUT`].
//!
//! Raw mode is a few `termios` calls through `libc` (already a dependency), so no terminal
//! crate is needed.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vivarium_core::control::ControlClient;
use vivarium_core::{Error, Library};

/// The key that detaches: Ctrl-] (ASCII GS), as in telnet and virsh.
pub const ESCAPE_KEY: u8 = 0x1d;
/// With input from a pipe: how long the guest must stay quiet after the input ended.
pub const QUIET_AFTER_INPUT: Duration = Duration::from_secs(1);

/// Set by SIGTERM, SIGHUP and (off a terminal) SIGINT: detach and restore the terminal.
static DETACH: AtomicBool = AtomicBool::new(false);

extern "C" fn on_detach_signal(_: libc::c_int) {
    DETACH.store(true, Ordering::SeqCst);
}

/// The terminal's settings before raw mode; restored on drop.
struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        // SAFETY: termios is plain old data; all-zero is a valid value to be overwritten.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is open and `saved` is a valid, writable termios.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut raw = saved;
        // SAFETY: `raw` is a valid termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: fd 0 is a terminal (tcgetattr succeeded) and `raw` is a valid termios.
        if unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings read from the same terminal in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.saved);
        }
    }
}

/// Why the console ended.
enum End {
    Detached,
    VmStopped,
    InputDone,
}

fn milliseconds_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Attaches this terminal (or pipe) to VM `name`'s serial console until detached.
pub fn attach(library: &Library, name: &str) -> Result<(), Error> {
    library.get(name)?;
    let stream = ControlClient::connect(library, name)?.attach_serial()?;
    let mut input = stream
        .input()
        .map_err(|e| Error::io("could not use the console connection", e))?;
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(0) } == 1;
    let handler: extern "C" fn(libc::c_int) = on_detach_signal;
    // SAFETY: the handler only stores to an atomic (async-signal-safe) and has the signature
    // `signal` expects.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGHUP, handler as libc::sighandler_t);
        if !tty {
            libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        }
    }
    let raw = if tty {
        let raw =
            RawMode::enter().map_err(|e| Error::io("could not put the terminal in raw mode", e))?;
        eprint!("[vivarium: attached to `{name}`; Ctrl-] detaches]\r\n");
        Some(raw)
    } else {
        None
    };

    let started = Instant::now();
    let last_output = Arc::new(AtomicU64::new(0));
    let ended = Arc::new(AtomicBool::new(false));
    let output = {
        let last_output = Arc::clone(&last_output);
        let ended = Arc::clone(&ended);
        let mut stream = stream;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut out = std::io::stdout();
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                            break;
                        }
                        last_output.store(milliseconds_since(started), Ordering::SeqCst);
                    }
                }
            }
            ended.store(true, Ordering::SeqCst);
        })
    };

    let mut stdin_open = true;
    let mut input_ended_at = 0u64;
    let end = loop {
        if ended.load(Ordering::SeqCst) {
            break End::VmStopped;
        }
        if DETACH.load(Ordering::SeqCst) {
            break End::Detached;
        }
        if !stdin_open {
            let quiet_since = last_output.load(Ordering::SeqCst).max(input_ended_at);
            if milliseconds_since(started) >= quiet_since + QUIET_AFTER_INPUT.as_millis() as u64 {
                break End::InputDone;
            }
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let mut poll = libc::pollfd {
            fd: 0,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `poll` is one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, 100) };
        if ready <= 0 {
            continue; // timeout, or EINTR from a signal: look at the flags again
        }
        let mut buf = [0u8; 1024];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            stdin_open = false;
            input_ended_at = milliseconds_since(started);
            continue;
        }
        if n == 0 {
            if tty {
                break End::Detached;
            }
            stdin_open = false;
            input_ended_at = milliseconds_since(started);
            continue;
        }
        let bytes = &buf[..n as usize];
        let (send, detach) = match bytes.iter().position(|&b| tty && b == ESCAPE_KEY) {
            Some(at) => (&bytes[..at], true),
            None => (bytes, false),
        };
        if !send.is_empty() && input.write_all(send).is_err() {
            break End::VmStopped;
        }
        if detach {
            break End::Detached;
        }
    };
    let _ = input.detach();
    let _ = output.join();
    drop(raw);
    match end {
        End::Detached if tty => eprintln!("\n[vivarium: detached from `{name}`]"),
        End::VmStopped => eprintln!("\n[vivarium: `{name}` stopped]"),
        End::Detached | End::InputDone => {}
    }
    Ok(())
}
