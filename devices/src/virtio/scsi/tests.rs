//! virtio-scsi request, control and event handling, with hostile chains.

use super::*;
use crate::scsi::Sense;
use crate::virtio::testutil::*;
use std::io::Write;
use std::sync::atomic::Ordering;
use virtio_queue::desc::RawDescriptor;

const REQ: u64 = 0x4_0000;
const RESP: u64 = 0x5_0000;
const DATA: u64 = 0x6_0000;
const RESP_LEN: u32 = 12 + 96;
/// A descriptor `(addr, len, flags)`.
type Seg = (u64, u32, u16);

fn image(sectors: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..sectors * 2048).map(|i| (i * 31 % 255) as u8).collect();
    f.write_all(&content).unwrap();
    f.flush().unwrap();
    (f, content)
}

fn device() -> (VirtioScsi, tempfile::NamedTempFile, Vec<u8>) {
    let (f, content) = image(16);
    let cd = Cdrom::new("cd0", Some(f.path())).unwrap();
    (VirtioScsi::new(cd), f, content)
}

/// Write a command request (LUN field `lun`, CDB `cdb` padded to 32 bytes) at REQ and
/// fill RESP and DATA with a marker.
fn request(mem: &GuestMemoryMmap, lun: [u8; 8], cdb: &[u8]) {
    let mut r = vec![0u8; 51];
    r[..8].copy_from_slice(&lun);
    r[8..16].copy_from_slice(&0x1234u64.to_le_bytes());
    r[19..19 + cdb.len()].copy_from_slice(cdb);
    mem.write_slice(&r, GuestAddress(REQ)).unwrap();
    mem.write_slice(&[0xee; 0x1_0000], GuestAddress(RESP))
        .unwrap();
    mem.write_slice(&[0xee; 0x1_0000], GuestAddress(DATA))
        .unwrap();
}

const LUN0: [u8; 8] = [1, 0, 0x40, 0, 0, 0, 0, 0];

/// The decoded response at `at`: (sense_len, resid, status, response, sense).
fn response(mem: &GuestMemoryMmap, at: u64) -> (u32, u32, u8, u8, Vec<u8>) {
    let mut r = [0u8; 12];
    mem.read_slice(&mut r, GuestAddress(at)).unwrap();
    let sense_len = u32::from_le_bytes(r[0..4].try_into().unwrap());
    let mut sense = vec![0u8; sense_len.min(96) as usize];
    mem.read_slice(&mut sense, GuestAddress(at + 12)).unwrap();
    (
        sense_len,
        u32::from_le_bytes(r[4..8].try_into().unwrap()),
        r[10],
        r[11],
        sense,
    )
}

/// Run one chain on queue `index` (the testutil queue) and return its used length.
fn run(dev: &mut VirtioScsi, mem: &GuestMemoryMmap, index: usize, q: Queue) -> u32 {
    let irq = CountingInterrupt::default();
    let mut queues: Vec<Queue> = (0..3).map(|_| Queue::new(16).unwrap()).collect();
    queues[index] = q;
    dev.process_queue_raw(index, &mut queues, mem, &irq)
        .unwrap();
    assert_eq!(used_idx(mem), 1, "the chain is always returned");
    used_entry(mem, 0).1
}

fn command(dev: &mut VirtioScsi, mem: &GuestMemoryMmap, descs: &[Seg]) -> u32 {
    let q = queue_chain(mem, descs);
    run(dev, mem, REQUEST_QUEUE, q)
}

#[test]
fn inquiry_through_the_request_queue() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    request(&mem, LUN0, &[0x12, 0, 0, 0, 36, 0]);
    let used = command(
        &mut dev,
        &mem,
        &[(REQ, 51, 0), (RESP, RESP_LEN, F_WRITE), (DATA, 64, F_WRITE)],
    );
    assert_eq!(used, RESP_LEN + 36);
    assert_eq!(response(&mem, RESP), (0, 28, 0, 0, vec![]));
    let mut inq = [0u8; 36];
    mem.read_slice(&mut inq, GuestAddress(DATA)).unwrap();
    assert_eq!(inq[0], 0x05);
    assert_eq!(&inq[8..16], b"VIVARIUM");
    assert_eq!(dev.stats().commands, 1);
}

#[test]
fn read_with_any_framing() {
    let (mut dev, _f, content) = device();
    let mem = memory();
    // READ(10) LBA 2, 2 sectors; header split over two descriptors, response and data
    // in one writable descriptor, then a second data descriptor.
    request(
        &mem,
        [1, 0, 0, 0, 0, 0, 0, 0],
        &[0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0],
    );
    let used = command(
        &mut dev,
        &mem,
        &[
            (REQ, 10, 0),
            (REQ + 10, 41, 0),
            (RESP, RESP_LEN + 1000, F_WRITE),
            (DATA, 3096, F_WRITE),
        ],
    );
    assert_eq!(used, RESP_LEN + 4096);
    assert_eq!(response(&mem, RESP), (0, 0, 0, 0, vec![]));
    let mut got = vec![0u8; 1000];
    mem.read_slice(&mut got, GuestAddress(RESP + u64::from(RESP_LEN)))
        .unwrap();
    assert_eq!(got, content[4096..5096]);
    let mut got = vec![0u8; 3096];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(got, content[5096..8192]);
}

#[test]
fn check_condition_carries_sense() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    request(&mem, LUN0, &[0xe7, 0, 0, 0, 0, 0]);
    let used = command(
        &mut dev,
        &mem,
        &[
            (REQ, 51, 0),
            (RESP, RESP_LEN, F_WRITE),
            (DATA, 512, F_WRITE),
        ],
    );
    assert_eq!(used, RESP_LEN);
    let (len, resid, status, resp, sense) = response(&mem, RESP);
    assert_eq!((len, resid, status, resp), (18, 512, 2, 0));
    assert_eq!(sense, Sense::INVALID_OPCODE.to_fixed());
    // Reads past the end.
    request(&mem, LUN0, &[0x28, 0, 0, 0, 0, 16, 0, 0, 1, 0]);
    command(
        &mut dev,
        &mem,
        &[
            (REQ, 51, 0),
            (RESP, RESP_LEN, F_WRITE),
            (DATA, 2048, F_WRITE),
        ],
    );
    assert_eq!(response(&mem, RESP).4, Sense::LBA_OUT_OF_RANGE.to_fixed());
    let mut d = [0u8; 2048];
    mem.read_slice(&mut d, GuestAddress(DATA)).unwrap();
    assert_eq!(d, [0xee; 2048], "no data on failure");
}

#[test]
fn transport_errors() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    let tur = [0u8; 6];
    for lun in [
        [1, 1, 0x40, 0, 0, 0, 0, 0], // target 1
        [1, 0, 0x40, 1, 0, 0, 0, 0], // LUN 1
        [0, 0, 0, 0, 0, 0, 0, 0],    // not format 1
        [1, 0, 0x40, 0, 0, 0, 0, 1], // second level
        [1, 0, 0x80, 0, 0, 0, 0, 0], // other addressing method
    ] {
        request(&mem, lun, &tur);
        let used = command(&mut dev, &mem, &[(REQ, 51, 0), (RESP, RESP_LEN, F_WRITE)]);
        assert_eq!(used, RESP_LEN, "{lun:?}");
        assert_eq!(
            response(&mem, RESP).3,
            vs::VIRTIO_SCSI_S_BAD_TARGET as u8,
            "{lun:?}"
        );
    }
    // Header shorter than 19 + cdb_size.
    request(&mem, LUN0, &tur);
    command(&mut dev, &mem, &[(REQ, 50, 0), (RESP, RESP_LEN, F_WRITE)]);
    assert_eq!(response(&mem, RESP).3, vs::VIRTIO_SCSI_S_FAILURE as u8);
    // Data-in larger than the buffers.
    request(&mem, LUN0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
    command(
        &mut dev,
        &mem,
        &[
            (REQ, 51, 0),
            (RESP, RESP_LEN, F_WRITE),
            (DATA, 4095, F_WRITE),
        ],
    );
    assert_eq!(response(&mem, RESP).3, vs::VIRTIO_SCSI_S_OVERRUN as u8);
    assert_eq!(dev.stats().transport_errors, 7);
    assert_eq!(dev.stats().commands, 1);
}

#[test]
fn hostile_chains_are_dropped_untouched() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    let cases: Vec<(&str, Vec<Seg>)> = vec![
        ("no writable part", vec![(REQ, 51, 0)]),
        (
            "response area too short",
            vec![(REQ, 51, 0), (RESP, RESP_LEN - 1, F_WRITE)],
        ),
        (
            "readable after writable",
            vec![(RESP, RESP_LEN, F_WRITE), (REQ, 51, 0)],
        ),
        (
            "buffer outside memory",
            vec![
                (REQ, 51, 0),
                (RESP, RESP_LEN, F_WRITE),
                (MEM_SIZE as u64 - 100, 200, F_WRITE),
            ],
        ),
        (
            "address wraps",
            vec![(u64::MAX - 10, 51, 0), (RESP, RESP_LEN, F_WRITE)],
        ),
        (
            "huge lengths",
            vec![
                (REQ, 51, 0),
                (RESP, u32::MAX, F_WRITE),
                (RESP, u32::MAX, F_WRITE),
            ],
        ),
    ];
    for (name, descs) in cases {
        request(&mem, LUN0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        assert_eq!(command(&mut dev, &mem, &descs), 0, "{name}");
        let mut r = [0u8; 256];
        mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
        assert_eq!(r, [0xee; 256], "{name}: nothing written");
    }
    // A loop.
    let q = queue_with(
        &mem,
        &[
            desc(REQ, 51, F_NEXT, 1),
            desc(RESP, RESP_LEN, F_WRITE | F_NEXT, 0),
        ],
        0,
    );
    assert_eq!(run(&mut dev, &mem, REQUEST_QUEUE, q), 0);
    assert_eq!(dev.stats().dropped, 7);
    assert_eq!(dev.stats().commands, 0);
}

#[test]
fn config_space_and_driver_sizes() {
    let (mut dev, _f, _) = device();
    let word = |dev: &VirtioScsi, at: u64| {
        let mut b = [0u8; 4];
        dev.read_config(at, &mut b);
        u32::from_le_bytes(b)
    };
    assert_eq!(word(&dev, 0), 1, "num_queues");
    assert_eq!(word(&dev, 4), SEG_MAX);
    assert_eq!(word(&dev, 8), MAX_SECTORS);
    assert_eq!(word(&dev, 16), 16, "event_info_size");
    assert_eq!(word(&dev, 20), 96, "sense_size");
    assert_eq!(word(&dev, 24), 32, "cdb_size");
    assert_eq!(word(&dev, 28), 0, "max_channel, max_target");
    assert_eq!(word(&dev, 32), 0, "max_lun");
    assert_eq!(word(&dev, u64::MAX - 1), 0);
    assert_eq!(dev.device_type(), 8);
    assert_eq!(dev.queue_max_sizes().len(), 3);

    // The driver shrinks sense to 8 bytes and CDBs to 16: the layouts follow.
    dev.write_config(20, &8u32.to_le_bytes());
    dev.write_config(24, &16u32.to_le_bytes());
    dev.write_config(24, &(MAX_CONFIGURABLE_SIZE + 1).to_le_bytes());
    dev.write_config(0, &7u32.to_le_bytes());
    dev.write_config(20, &[1, 2]);
    assert_eq!((word(&dev, 20), word(&dev, 24), word(&dev, 0)), (8, 16, 1));
    let mem = memory();
    request(&mem, LUN0, &[0xe7, 0, 0, 0, 0, 0]);
    let used = command(&mut dev, &mem, &[(REQ, 35, 0), (RESP, 20, F_WRITE)]);
    assert_eq!(used, 20);
    let (len, _, status, resp, sense) = response(&mem, RESP);
    assert_eq!((len, status, resp), (8, 2, 0));
    assert_eq!(sense, Sense::INVALID_OPCODE.to_fixed()[..8]);
    dev.reset();
    assert_eq!((word(&dev, 20), word(&dev, 24)), (96, 32));
}

/// Write a control request at REQ.
fn control_request(mem: &GuestMemoryMmap, bytes: &[u8]) {
    mem.write_slice(bytes, GuestAddress(REQ)).unwrap();
    mem.write_slice(&[0xee; 64], GuestAddress(RESP)).unwrap();
}

fn tmf(subtype: u32, lun: [u8; 8]) -> Vec<u8> {
    let mut r = vs::VIRTIO_SCSI_T_TMF.to_le_bytes().to_vec();
    r.extend_from_slice(&subtype.to_le_bytes());
    r.extend_from_slice(&lun);
    r.extend_from_slice(&7u64.to_le_bytes());
    r
}

fn resp_byte(mem: &GuestMemoryMmap, at: u64) -> u8 {
    mem.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn control_queue() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    let control = |dev: &mut VirtioScsi, req: &[u8], descs: &[Seg]| {
        control_request(&mem, req);
        let q = queue_chain(&mem, descs);
        run(dev, &mem, CONTROL_QUEUE, q)
    };
    let tmf_chain = [(REQ, 24, 0), (RESP, 1, F_WRITE)];
    for (subtype, lun, want) in [
        (vs::VIRTIO_SCSI_T_TMF_ABORT_TASK, LUN0, vs::VIRTIO_SCSI_S_OK),
        (
            vs::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
            LUN0,
            vs::VIRTIO_SCSI_S_OK,
        ),
        (
            vs::VIRTIO_SCSI_T_TMF_CLEAR_ACA,
            LUN0,
            vs::VIRTIO_SCSI_S_FUNCTION_REJECTED,
        ),
        (99, LUN0, vs::VIRTIO_SCSI_S_FUNCTION_REJECTED),
        (
            vs::VIRTIO_SCSI_T_TMF_ABORT_TASK,
            [1, 3, 0, 0, 0, 0, 0, 0],
            vs::VIRTIO_SCSI_S_BAD_TARGET,
        ),
    ] {
        assert_eq!(control(&mut dev, &tmf(subtype, lun), &tmf_chain), 1);
        assert_eq!(u32::from(resp_byte(&mem, RESP)), want, "subtype {subtype}");
    }
    // A logical unit reset unlocks the drive.
    let control_handle = dev.cdrom_control();
    let mut out = crate::scsi::VecDataIn::new(0);
    dev.cdrom.execute(&[0x1e, 0, 0, 0, 1, 0], &mut out);
    assert!(control_handle.locked());
    control(
        &mut dev,
        &tmf(vs::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, LUN0),
        &tmf_chain,
    );
    assert_eq!(resp_byte(&mem, RESP), 0);
    assert!(!control_handle.locked());

    // Asynchronous notification: media change is the one class supported.
    let mut an = vs::VIRTIO_SCSI_T_AN_QUERY.to_le_bytes().to_vec();
    an.extend_from_slice(&LUN0);
    an.extend_from_slice(&0xffu32.to_le_bytes());
    assert_eq!(
        control(&mut dev, &an, &[(REQ, 16, 0), (RESP, 5, F_WRITE)]),
        5
    );
    let mut r = [0u8; 5];
    mem.read_slice(&mut r, GuestAddress(RESP)).unwrap();
    assert_eq!(r, [16, 0, 0, 0, 0]);
    assert_eq!(dev.subscribed, 0, "a query subscribes to nothing");

    // Hostile: short requests, short responses, unknown types are dropped.
    let dropped = dev.stats().dropped;
    assert_eq!(
        control(&mut dev, &tmf(0, LUN0), &[(REQ, 20, 0), (RESP, 1, F_WRITE)]),
        0
    );
    assert_eq!(
        control(&mut dev, &an, &[(REQ, 16, 0), (RESP, 4, F_WRITE)]),
        0
    );
    assert_eq!(
        control(&mut dev, &an, &[(REQ, 3, 0), (RESP, 5, F_WRITE)]),
        0
    );
    assert_eq!(
        control(&mut dev, &[9, 0, 0, 0], &[(REQ, 16, 0), (RESP, 5, F_WRITE)]),
        0
    );
    assert_eq!(control(&mut dev, &an, &[(RESP, 5, F_WRITE)]), 0);
    assert_eq!(dev.stats().dropped, dropped + 5);
}

/// Rings of a second 16-entry queue (the event queue), clear of testutil's.
const EVQ: u64 = 0x8_0000;

fn event_queue(mem: &GuestMemoryMmap, bufs: &[RawDescriptor]) -> Queue {
    for (i, d) in bufs.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(EVQ + 16 * i as u64))
            .unwrap();
        // Each descriptor is its own chain.
        mem.write_obj(i as u16, GuestAddress(EVQ + 0x100 + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(bufs.len() as u16, GuestAddress(EVQ + 0x102))
        .unwrap();
    mem.write_slice(&[0u8; 0x100], GuestAddress(EVQ + 0x200))
        .unwrap();
    let mut q = Queue::new(16).unwrap();
    q.set_desc_table_address(Some(EVQ as u32), Some(0));
    q.set_avail_ring_address(Some(EVQ as u32 + 0x100), Some(0));
    q.set_used_ring_address(Some(EVQ as u32 + 0x200), Some(0));
    q.set_ready(true);
    q
}

fn event_used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(EVQ + 0x202)).unwrap()
}

#[test]
fn media_change_events() {
    let (mut dev, f, _) = device();
    let mem = memory();
    let irq = CountingInterrupt::default();
    let control = dev.cdrom_control();
    let ev = 0x9_0000u64;
    let mut queues = vec![
        Queue::new(16).unwrap(),
        event_queue(
            &mem,
            &[
                desc(ev, 16, 0, 0), // readable: refused
                desc(ev + 0x100, 16, F_WRITE, 0),
                desc(ev + 0x200, 16, F_WRITE, 0),
            ],
        ),
        Queue::new(16).unwrap(),
    ];
    // Without F_CHANGE or a subscription, buffers are kept and nothing is sent.
    control.eject().unwrap();
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 0);

    dev.set_driver_features(1 << vs::VIRTIO_SCSI_F_CHANGE);
    // No change since: nothing sent either.
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 0);
    control.insert(f.path()).unwrap();
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    // The readable buffer came back empty, the next one holds the event.
    assert_eq!(event_used_idx(&mem), 2);
    let mut e = [0u8; 16];
    mem.read_slice(&mut e, GuestAddress(ev + 0x100)).unwrap();
    assert_eq!(e, [3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x28, 0, 0, 0]);
    assert_eq!(irq.queues.lock().unwrap().as_slice(), &[EVENT_QUEUE]);
    assert_eq!(dev.stats().events, 1);
    // Reported once.
    dev.process_queue_raw(REQUEST_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 2);

    // A change with no buffer left stays pending until the driver gives one.
    control.eject().unwrap();
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 3);
    control.insert(f.path()).unwrap();
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 3, "no buffer");
    mem.write_obj(desc(ev + 0x300, 64, F_WRITE, 0), GuestAddress(EVQ + 16 * 3))
        .unwrap();
    mem.write_obj(3u16, GuestAddress(EVQ + 0x100 + 4 + 6))
        .unwrap();
    mem.write_obj(4u16, GuestAddress(EVQ + 0x102)).unwrap();
    dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq)
        .unwrap();
    assert_eq!(event_used_idx(&mem), 4);
    assert_eq!(irq.queue.load(Ordering::SeqCst), 3);

    // A subscribed driver gets asynchronous notifications instead.
    dev.subscribed = VIRTIO_SCSI_EVT_ASYNC_MEDIA_CHANGE;
    assert_eq!(
        dev.change_event(),
        Some((vs::VIRTIO_SCSI_T_ASYNC_NOTIFY, 16))
    );
}

#[test]
fn broken_event_ring_needs_reset() {
    let (mut dev, _f, _) = device();
    let mem = memory();
    let irq = CountingInterrupt::default();
    dev.set_driver_features(1 << vs::VIRTIO_SCSI_F_CHANGE);
    let mut evq = event_queue(&mem, &[desc(0x9_0000, 16, F_WRITE, 0)]);
    evq.set_used_ring_address(Some(EVQ as u32 + 0x100), Some(0));
    let mut queues = vec![Queue::new(16).unwrap(), evq, Queue::new(16).unwrap()];
    dev.cdrom_control().force_eject();
    assert!(matches!(
        dev.process_queue_raw(EVENT_QUEUE, &mut queues, &mem, &irq),
        Err(Error::NeedsReset(_))
    ));
}

/// A driver's view, through the buses only (ECAM, BAR MMIO, notify writes, MSI-X), wired
/// as the KVM backend wires it: an INQUIRY on the request queue, then a host-side eject
/// whose change listener notifies the event queue.
#[test]
fn through_pci_with_the_backend_wiring() {
    use crate::bus::{Bus, BusKind};
    use crate::pci::tests_support::RecordingSignaller;
    use crate::pci::*;
    use crate::virtio::pci::VirtioPciDevice;
    use crate::virtio::*;
    use std::sync::Mutex;

    const ECAM: u64 = 0xe000_0000;
    let mem = memory();
    let (f, _) = image(4);
    let control = CdromControl::new(Some(f.path())).unwrap();
    let scsi = VirtioScsi::new(Cdrom::with_control("cd0", &control));
    let msis = Arc::new(RecordingSignaller::default());
    let dev = VirtioPciDevice::new(Box::new(scsi), mem.clone(), msis.clone()).unwrap();
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let pio = Arc::new(Bus::new(BusKind::Pio));
    let windows = PciWindows {
        mem32: (0xc000_0000, 0x2000_0000),
        mem64: (0x80_0000_0000, 0x10_0000_0000),
        io: (0xc000, 0x1000),
    };
    let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), pio, windows)));
    mmio.insert(
        ECAM,
        ECAM_BUS_SIZE,
        Arc::new(Mutex::new(PciConfigMmio::new(root.clone()))),
    )
    .unwrap();
    let dev = Arc::new(Mutex::new(dev));
    let slot = u64::from(root.lock().unwrap().add_device(dev.clone()).unwrap());
    let cfg_read = |reg: u64, len: usize| {
        let mut b = [0u8; 4];
        mmio.read(ECAM + (slot << 15) + reg, &mut b[..len]);
        u32::from_le_bytes(b)
    };
    let cfg_write = |reg: u64, data: &[u8]| mmio.write(ECAM + (slot << 15) + reg, data);
    assert_eq!(cfg_read(0, 4), 0x1048_1af4, "virtio 1.x SCSI host");
    assert_eq!(cfg_read(0x08, 4) >> 8, 0x01_0000, "mass storage, SCSI");
    let bar = u64::from(cfg_read(0x10, 4) & !0xf) | (u64::from(cfg_read(0x14, 4)) << 32);
    cfg_write(4, &(COMMAND_MEMORY | COMMAND_BUS_MASTER).to_le_bytes());
    let mut p = u64::from(cfg_read(0x34, 1));
    while cfg_read(p, 1) != 0x11 {
        p = u64::from(cfg_read(p + 1, 1));
    }
    cfg_write(p + 2, &MSIX_CONTROL_ENABLE.to_le_bytes());
    let w = |off: u64, data: &[u8]| assert!(mmio.write(bar + off, data));
    for v in 0..3u64 {
        w(0x4000 + 16 * v, &0xfee0_0000u32.to_le_bytes());
        w(0x4008 + 16 * v, &(0x40 + v as u32).to_le_bytes());
        w(0x400c + 16 * v, &0u32.to_le_bytes());
    }
    w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
    w(0x08, &0u32.to_le_bytes());
    w(0x0c, &(1u32 << vs::VIRTIO_SCSI_F_CHANGE).to_le_bytes());
    w(0x08, &1u32.to_le_bytes());
    w(0x0c, &1u32.to_le_bytes());
    w(
        0x14,
        &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK],
    );
    // Rings: control at 0xa_0000 (empty), event at EVQ, request where testutil puts it.
    let ev = 0x9_0000u64;
    event_queue(&mem, &[desc(ev, 16, F_WRITE, 0)]);
    request(&mem, LUN0, &[0x12, 0, 0, 0, 36, 0]);
    queue_chain(
        &mem,
        &[(REQ, 51, 0), (RESP, RESP_LEN, F_WRITE), (DATA, 36, F_WRITE)],
    );
    for (q, base) in [(0u16, 0xa_0000u64), (1, EVQ), (2, DESC_TABLE)] {
        let (desc_table, avail, used) = if q == 2 {
            (DESC_TABLE, AVAIL_RING, USED_RING)
        } else {
            (base, base + 0x100, base + 0x200)
        };
        w(0x16, &q.to_le_bytes());
        w(0x18, &16u16.to_le_bytes());
        w(0x1a, &q.to_le_bytes());
        for (off, addr) in [(0x20, desc_table), (0x28, avail), (0x30, used)] {
            w(off, &(addr as u32).to_le_bytes());
            w(off + 4, &((addr >> 32) as u32).to_le_bytes());
        }
        w(0x1c, &1u16.to_le_bytes());
    }
    w(
        0x14,
        &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK],
    );
    // The backend's wiring: a medium change notifies the event queue.
    let weak = Arc::downgrade(&dev);
    control.set_change_listener(Arc::new(move || {
        if let Some(d) = weak.upgrade() {
            d.lock().unwrap().notify_queue(EVENT_QUEUE);
        }
    }));

    let notify = dev.lock().unwrap().queue_notify_address(2).unwrap();
    assert!(mmio.write(notify, &2u16.to_le_bytes()));
    assert_eq!(response(&mem, RESP), (0, 0, 0, 0, vec![]));
    let mut inq = [0u8; 36];
    mem.read_slice(&mut inq, GuestAddress(DATA)).unwrap();
    assert_eq!(&inq[..2], &[0x05, 0x80]);
    assert_eq!(*msis.0.lock().unwrap(), vec![(0xfee0_0000, 0x42)]);

    control.eject().unwrap();
    assert_eq!(event_used_idx(&mem), 1);
    let mut e = [0u8; 16];
    mem.read_slice(&mut e, GuestAddress(ev)).unwrap();
    assert_eq!(
        u32::from_le_bytes(e[..4].try_into().unwrap()),
        vs::VIRTIO_SCSI_T_PARAM_CHANGE
    );
    assert_eq!(
        *msis.0.lock().unwrap(),
        vec![(0xfee0_0000, 0x42), (0xfee0_0000, 0x41)]
    );
}
