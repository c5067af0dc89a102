//! The commands that drive running VMs: start, stop, pause, resume, reset, status. They talk
//! to the VM's own process through its control socket; none of them runs a VM itself.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vivarium_core::control::{ControlClient, ControlError, LastRun, LiveState, live_state};
use vivarium_core::{Error, Library};

/// How long `stop --force` waits for the VM process to end after the power is cut.
const POWER_OFF_WAIT: Duration = Duration::from_secs(15);

/// `vivarium start NAME`.
pub fn start(
    library: &Library,
    name: &str,
    boot_once: Option<vivarium_core::backend::BootOnce>,
    json: bool,
) -> Result<(), Error> {
    let pid = vivarium_vm::launch::spawn(library, name, boot_once)?;
    if json {
        println!("{}", json!({"started": name, "pid": pid}));
    } else {
        println!(
            "Started `{name}` (VM process {pid}). `vivarium console {name}` shows its serial \
             console; `vivarium stop {name}` shuts it down."
        );
    }
    Ok(())
}

fn connect(library: &Library, name: &str) -> Result<ControlClient, Error> {
    library.get(name)?;
    Ok(ControlClient::connect(library, name)?)
}

/// Waits until `name` has no VM process any more; false on timeout.
fn wait_until_stopped(library: &Library, name: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if matches!(live_state(library, name), LiveState::Stopped { .. }) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `vivarium stop NAME [--force] [--timeout SECS]`.
pub fn stop(
    library: &Library,
    name: &str,
    force: bool,
    timeout: Duration,
    json: bool,
) -> Result<(), Error> {
    library.get(name)?;
    let mut client = match ControlClient::connect(library, name) {
        Ok(client) => client,
        Err(ControlError::NotRunning(_)) => {
            if json {
                println!("{}", json!({"stopped": name, "was_running": false}));
            } else {
                println!("`{name}` is not running.");
            }
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if force {
        client.power_off()?;
        drop(client);
        if !wait_until_stopped(library, name, POWER_OFF_WAIT) {
            return Err(ControlError::Timeout(format!(
                "`{name}` was powered off but its VM process did not end within {} s; see its \
                 logs/vm.log",
                POWER_OFF_WAIT.as_secs()
            ))
            .into());
        }
    } else {
        client.shut_down()?;
        drop(client);
        if !json {
            eprintln!(
                "Pressed the power button of `{name}`; waiting up to {} s for the guest to \
                 power off...",
                timeout.as_secs()
            );
        }
        if !wait_until_stopped(library, name, timeout) {
            return Err(ControlError::Timeout(format!(
                "`{name}` did not power off within {} s of the power button (the guest may \
                 ignore it, or need longer): `vivarium stop --force {name}` powers it off at \
                 once",
                timeout.as_secs()
            ))
            .into());
        }
    }
    let last = vivarium_core::control::last_run(library, name);
    if json {
        println!(
            "{}",
            json!({"stopped": name, "was_running": true, "last_run": last.as_ref().map(last_run_json)})
        );
    } else {
        let how = last
            .map(|l| l.exit.as_str().replace('-', " "))
            .unwrap_or_else(|| "stopped".into());
        println!("`{name}` {how}.");
    }
    Ok(())
}

fn simple(
    library: &Library,
    name: &str,
    json: bool,
    what: &str,
    op: impl FnOnce(&mut ControlClient) -> Result<(), ControlError>,
) -> Result<(), Error> {
    let mut client = connect(library, name)?;
    op(&mut client)?;
    if json {
        println!("{}", json!({"vm": name, "done": what}));
    } else {
        println!("`{name}`: {what}.");
    }
    Ok(())
}

/// `vivarium pause NAME`.
pub fn pause(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    simple(library, name, json, "paused", ControlClient::pause)
}

/// `vivarium resume NAME`.
pub fn resume(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    simple(library, name, json, "resumed", ControlClient::resume)
}

/// `vivarium reset NAME`.
pub fn reset(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    simple(library, name, json, "reset", ControlClient::reset)
}

/// `vivarium eject NAME [--force]`: empty a running VM's CD-ROM drive.
pub fn eject(library: &Library, name: &str, force: bool, json: bool) -> Result<(), Error> {
    simple(library, name, json, "CD-ROM ejected", |c| {
        c.eject_cdrom(force)
    })
}

/// `vivarium insert NAME FILE`: put an image in a running VM's CD-ROM drive.
pub fn insert(
    library: &Library,
    name: &str,
    image: &std::path::Path,
    json: bool,
) -> Result<(), Error> {
    // The VM process has its own working folder: send an absolute path.
    let absolute = std::fs::canonicalize(image).map_err(|_| {
        Error::InvalidInput(format!(
            "the CD-ROM image `{}` does not exist: check the path",
            image.display()
        ))
    })?;
    simple(library, name, json, "CD-ROM image inserted", |c| {
        c.insert_cdrom(&absolute)
    })
}

/// The last run as JSON.
pub fn last_run_json(run: &LastRun) -> Value {
    json!({
        "exit": run.exit.as_str(),
        "detail": run.exit.detail(),
        "started_at_unix": run.started_at_unix,
        "ended_at_unix": run.ended_at_unix,
    })
}

/// The live state as JSON fields: `state`, and `pid`/`started_at_unix` or `last_run`.
pub fn live_json(state: &LiveState) -> Value {
    match state {
        LiveState::Running(status) => json!({
            "state": status.state.as_str(),
            "pid": status.pid,
            "started_at_unix": status.started_at_unix,
        }),
        LiveState::Stopped { last_run } => json!({
            "state": "stopped",
            "last_run": last_run.as_ref().map(last_run_json),
        }),
        LiveState::Busy => json!({"state": "busy"}),
    }
}

/// One line about the live state, for people.
pub fn describe(state: &LiveState) -> String {
    match state {
        LiveState::Running(status) => format!(
            "{} (VM process {}, since {})",
            status.state.as_str(),
            status.pid,
            when(status.started_at_unix)
        ),
        LiveState::Busy => {
            "busy: another operation (such as a full clone copying its disks) holds it".into()
        }
        LiveState::Stopped { last_run: None } => "stopped (never run)".into(),
        LiveState::Stopped {
            last_run: Some(run),
        } => {
            let mut text = format!(
                "stopped; last run {} at {}",
                run.exit.as_str().replace('-', " "),
                when(run.ended_at_unix)
            );
            if let Some(detail) = run.exit.detail() {
                text.push_str(&format!(": {}", detail.lines().next().unwrap_or("")));
            }
            text
        }
    }
}

fn when(unix: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// `vivarium status NAME`.
pub fn status(library: &Library, name: &str, json: bool) -> Result<(), Error> {
    library.get(name)?;
    let state = live_state(library, name);
    if json {
        let mut out = live_json(&state);
        out["name"] = json!(name);
        println!("{out}");
    } else {
        println!("`{name}`: {}", describe(&state));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(when(951_782_400), "2000-02-29T00:00:00Z");
    }
}
