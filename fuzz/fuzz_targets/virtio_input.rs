//! Fuzz virtio-input, keyboard and tablet: the driver's select/subsel/size protocol with
//! writes and reads of any width at any offset of the configuration space, host key presses
//! and pointer reports into a fuzzed event queue, LED events out of a fuzzed status queue,
//! resets and re-activations, over fuzzed guest memory (two regions with a hole).
//!
//! Oracles besides "no panic, no hang": a configuration answer is at most 128 bytes and
//! nothing past it reads other than zero; select and subsel read back as written; every
//! host action is either delivered, or dropped and counted, or refused as unsupported
//! without being counted.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use vivarium_devices::i8042::{Key, MouseButtons};
use vivarium_devices::virtio::VirtioDevice;
use vivarium_devices::virtio::input::{CONFIG_LEN, Input, InputKind, QUEUE_SIZE, SendError};
use vivarium_devices_fuzz::{Counter, Cursor, QUEUE_HEADER, guest_memory};

fuzz_target!(|input: &[u8]| {
    let mut c = Cursor::new(input);
    let kind = if c.u8() & 1 == 0 {
        InputKind::Keyboard
    } else {
        InputKind::Tablet
    };
    let queues = c.bytes(2 * QUEUE_HEADER);
    let ops_len = usize::from(c.u16() % 2048);
    let ops = c.bytes(ops_len);
    let memory = Arc::new(guest_memory(c.rest()));
    let interrupt = Counter::shared();
    let mut dev = Input::new(kind, "fuzz");
    let sender = dev.sender();
    let activate = |dev: &mut Input, header: &[u8]| {
        let mut q = Cursor::new(header);
        let queues = vec![q.queue(QUEUE_SIZE), q.queue(QUEUE_SIZE)];
        dev.activate(memory.clone(), queues, 0, interrupt.clone())
            .expect("activation with both queues");
    };
    activate(&mut dev, queues);
    let (mut select, mut subsel) = (0u8, 0u8);
    let mut c = Cursor::new(ops);
    while !c.is_empty() {
        let before = sender.stats();
        let result = match c.u8() % 8 {
            0 => {
                let key = Key::ALL[usize::from(c.u8()) % Key::ALL.len()];
                Some(sender.key(key, c.u8() & 1 != 0))
            }
            1 => {
                let flags = c.u8();
                let position = (flags & 8 != 0).then(|| (c.u16(), c.u16()));
                let buttons = MouseButtons {
                    left: flags & 1 != 0,
                    right: flags & 2 != 0,
                    middle: flags & 4 != 0,
                };
                let wheel = i32::from(c.u8() as i8);
                Some(sender.pointer(position, buttons, wheel))
            }
            2 => {
                let offset = u64::from(c.u8() % 144);
                let width = c.width();
                let bytes = c.bytes(width);
                for (i, b) in bytes.iter().enumerate() {
                    match offset + i as u64 {
                        0 => select = *b,
                        1 => subsel = *b,
                        _ => {}
                    }
                }
                dev.write_config(offset, bytes);
                None
            }
            3 => {
                let mut config = [0xaau8; CONFIG_LEN + 16];
                dev.read_config(0, &mut config);
                assert_eq!((config[0], config[1]), (select, subsel));
                let size = usize::from(config[2]);
                assert!(size <= 128, "size {size}");
                assert!(config[8 + size..].iter().all(|b| *b == 0), "{config:?}");
                let mut some = [0u8; 8];
                let offset = u64::from(c.u8());
                let len = c.width();
                dev.read_config(offset, &mut some[..len]);
                None
            }
            4 => {
                let _ = dev.process_queue(0);
                None
            }
            5 => {
                let _ = dev.process_queue(1);
                None
            }
            6 => {
                dev.reset();
                None
            }
            _ => {
                activate(&mut dev, c.bytes(2 * QUEUE_HEADER));
                None
            }
        };
        let after = sender.stats();
        match result {
            Some(Ok(())) => assert_eq!(after.dropped, before.dropped),
            Some(Err(SendError::Unsupported { .. })) => assert_eq!(after, before),
            Some(Err(_)) => {
                assert_eq!(after.dropped, before.dropped + 1);
                assert!(after.reports <= before.reports + 1);
            }
            None => {}
        }
    }
});
