//! Diagnostics of the VM process and of `vivarium run`: the backend's and devices' `tracing`
//! events (a guest poking a device it should not, a machine that could not release its memory)
//! go to standard error, which the VM process points at its `logs/vm.log`.

use tracing::Level;

/// The environment variable that sets how much is logged: `error`, `warn`, `info` (the
/// default), `debug` or `trace`.
pub const LOG_LEVEL_VARIABLE: &str = "VIVARIUM_LOG";

/// The level named by `VIVARIUM_LOG`, or `info`.
pub fn level_from_env() -> Level {
    std::env::var(LOG_LEVEL_VARIABLE)
        .ok()
        .and_then(|value| value.trim().parse::<Level>().ok())
        .unwrap_or(Level::INFO)
}

/// Sends `tracing` events to standard error, once per process (later calls do nothing).
pub fn log_to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level_from_env())
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_from_their_names() {
        assert_eq!("warn".parse::<Level>().ok(), Some(Level::WARN));
        assert_eq!("DEBUG".parse::<Level>().ok(), Some(Level::DEBUG));
        assert!("loud".parse::<Level>().is_err());
    }
}
