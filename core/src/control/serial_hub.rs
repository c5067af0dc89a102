//! The VM process's end of the serial console: everything the guest writes goes to the serial
//! log, to a backlog of recent output, to an optional echo (the terminal of `vivarium run`),
//! and to every attached client.
//!
//! The guest is never slowed down by a client: each client has a bounded queue, and a client
//! that falls that far behind is dropped (its connection closes) instead of blocking the vCPU.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::logfile::RotatingLog;

/// Bytes of recent output a newly attached client gets first.
pub const BACKLOG_BYTES: usize = 64 * 1024;
/// Chunks of output a client may have waiting before it is dropped.
const CLIENT_QUEUE_CHUNKS: usize = 4096;

struct Hub {
    backlog: VecDeque<u8>,
    log: Option<RotatingLog>,
    echo: Option<Box<dyn Write + Send>>,
    clients: Vec<(u64, SyncSender<Vec<u8>>)>,
    next_id: u64,
}

/// The fan-out of a VM's serial output. Cheap to clone; all clones are the same hub.
#[derive(Clone)]
pub struct SerialHub(Arc<Mutex<Hub>>);

/// A client's feed of live output, from [`SerialHub::subscribe`].
pub struct Subscription {
    /// Identifies the client for [`SerialHub::unsubscribe`].
    pub id: u64,
    /// Output chunks, in order. Ends when the client is unsubscribed or dropped as too slow.
    pub output: Receiver<Vec<u8>>,
}

impl SerialHub {
    /// A hub that writes to `log` (if any) and echoes to `echo` (if any).
    pub fn new(log: Option<RotatingLog>, echo: Option<Box<dyn Write + Send>>) -> SerialHub {
        SerialHub(Arc::new(Mutex::new(Hub {
            backlog: VecDeque::with_capacity(BACKLOG_BYTES),
            log,
            echo,
            clients: Vec::new(),
            next_id: 0,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Attaches a client: returns the backlog and the live feed that continues it (no byte is
    /// lost or repeated between the two).
    pub fn subscribe(&self) -> (Vec<u8>, Subscription) {
        let mut hub = self.lock();
        let (sender, output) = sync_channel(CLIENT_QUEUE_CHUNKS);
        let id = hub.next_id;
        hub.next_id += 1;
        hub.clients.push((id, sender));
        let backlog = hub.backlog.iter().copied().collect();
        (backlog, Subscription { id, output })
    }

    /// Detaches a client; its feed ends.
    pub fn unsubscribe(&self, id: u64) {
        self.lock().clients.retain(|(client, _)| *client != id);
    }

    /// How many clients are attached.
    pub fn clients(&self) -> usize {
        self.lock().clients.len()
    }

    /// Writes a note into the serial log only (e.g. "VM started"), not to clients.
    pub fn note(&self, text: &str) {
        if let Some(log) = &mut self.lock().log {
            let _ = log.line(&format!("[vivarium] {text}"));
        }
    }

    fn publish(&self, bytes: &[u8]) {
        let mut hub = self.lock();
        let held = hub.backlog.len();
        let overflow = (held + bytes.len()).saturating_sub(BACKLOG_BYTES);
        hub.backlog.drain(..overflow.min(held));
        let keep = &bytes[bytes.len().saturating_sub(BACKLOG_BYTES)..];
        hub.backlog.extend(keep);
        if let Some(log) = &mut hub.log {
            // A full disk must not stop the guest; the log just misses output.
            let _ = log.append(bytes);
        }
        if let Some(echo) = &mut hub.echo {
            let _ = echo.write_all(bytes);
            let _ = echo.flush();
        }
        hub.clients
            .retain(|(_, client)| match client.try_send(bytes.to_vec()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    tracing::warn!("a serial console client fell behind and was dropped");
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// The sink the machine's serial port writes to.
    pub fn sink(&self) -> Box<dyn Write + Send> {
        Box::new(HubSink(self.clone()))
    }
}

/// The guest side of the hub.
struct HubSink(SerialHub);

impl Write for HubSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.publish(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_the_backlog_then_live_output() {
        let hub = SerialHub::new(None, None);
        let mut sink = hub.sink();
        sink.write_all(b"early ").unwrap();
        let (backlog, sub) = hub.subscribe();
        assert_eq!(backlog, b"early ");
        sink.write_all(b"late").unwrap();
        assert_eq!(sub.output.recv().unwrap(), b"late");
        assert_eq!(hub.clients(), 1);
        hub.unsubscribe(sub.id);
        assert!(sub.output.recv().is_err(), "the feed ends");
        assert_eq!(hub.clients(), 0);
    }

    #[test]
    fn the_backlog_is_bounded_and_a_slow_client_is_dropped() {
        let hub = SerialHub::new(None, None);
        let (_, slow) = hub.subscribe();
        let mut sink = hub.sink();
        for _ in 0..CLIENT_QUEUE_CHUNKS + 10 {
            sink.write_all(&[b'x'; 100]).unwrap();
        }
        assert_eq!(hub.clients(), 0, "the slow client was dropped");
        let (backlog, _) = hub.subscribe();
        assert_eq!(backlog.len(), BACKLOG_BYTES);
        drop(slow);
    }
}
