//! The 16550A UART (COM1), on `vm_superio::Serial`, as a bus device.
//!
//! Registered on the port I/O bus (8 ports at 0x3f8 for COM1). Output bytes go to a sink;
//! input bytes are queued into the receive FIFO with [`Serial::enqueue_input`] and raise the
//! receive interrupt the guest enabled.

use std::io::Write;
use std::sync::Arc;

use crate::IrqLine;
use crate::bus::BusDevice;

/// Adapts an [`IrqLine`] to vm-superio's trigger.
struct Trigger(Arc<dyn IrqLine>);

impl vm_superio::Trigger for Trigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.trigger()
    }
}

/// A 16550A UART.
pub struct Serial {
    uart: vm_superio::Serial<Trigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// A UART that raises `irq` and writes what the guest sends to `output`.
    pub fn new(irq: Arc<dyn IrqLine>, output: Box<dyn Write + Send>) -> Self {
        Serial {
            uart: vm_superio::Serial::new(Trigger(irq), output),
        }
    }

    /// Queues bytes the guest will read; returns how many fit in the receive FIFO.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let room = self.uart.fifo_capacity().min(bytes.len());
        if room == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&bytes[..room]) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("serial input dropped: {e:?}");
                0
            }
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl crate::ConsoleInput for Serial {
    fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        Serial::enqueue_input(self, bytes)
    }

    fn input_room(&self) -> usize {
        Serial::input_room(self)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The UART's registers are bytes; wider accesses read the addressed byte only.
        if let (Some(first), Ok(offset)) = (data.first_mut(), u8::try_from(offset))
            && offset < 8
        {
            *first = self.uart.read(offset);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let (Some(&value), Ok(offset)) = (data.first(), u8::try_from(offset)) else {
            return;
        };
        if offset >= 8 {
            return;
        }
        if let Err(e) = self.uart.write(offset, value) {
            // An output sink that fails (a closed terminal) must not stop the guest.
            tracing::debug!("serial write failed: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Default)]
    struct CountIrqs(AtomicUsize);
    impl IrqLine for CountIrqs {
        fn trigger(&self) -> std::io::Result<()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);
    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_sink_and_input_the_guest() {
        let irqs = Arc::new(CountIrqs::default());
        let out = Capture::default();
        let mut serial = Serial::new(irqs.clone(), Box::new(out.clone()));
        for b in b"hi\n" {
            serial.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Enable the receive interrupt (IER bit 0), then type.
        serial.write(0x3f8, 1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"ok"), 2);
        assert!(irqs.0.load(Ordering::SeqCst) >= 1);
        let mut byte = [0u8];
        serial.read(0x3f8, 0, &mut byte);
        assert_eq!(byte[0], b'o');
    }

    #[test]
    fn garbage_never_panics() {
        let mut serial = Serial::new(Arc::new(CountIrqs::default()), Box::new(Capture::default()));
        for offset in 0..16u64 {
            for value in [0u8, 0x80, 0xff, 0x1f] {
                serial.write(0x3f8, offset, &[value, value]);
                let mut wide = [0u8; 4];
                serial.read(0x3f8, offset, &mut wide);
                serial.write(0x3f8, offset, &[]);
                serial.read(0x3f8, offset, &mut []);
            }
        }
        let flood = vec![b'x'; 10_000];
        let taken = serial.enqueue_input(&flood);
        assert!(taken < flood.len());
    }
}
