//! Response layouts checked byte by byte against SPC-4 / MMC-6, hostile CDBs, and
//! eject/insert sequences.

use super::*;
use crate::scsi::{KEY_ILLEGAL_REQUEST, VecDataIn};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An image of `sectors` sectors whose bytes are a function of their offset.
fn image(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let content: Vec<u8> = (0..len).map(|i| (i * 13 % 253) as u8).collect();
    f.write_all(&content).unwrap();
    f.flush().unwrap();
    (f, content)
}

fn drive(sectors: usize) -> (Cdrom, tempfile::NamedTempFile, Vec<u8>) {
    let (f, content) = image(sectors * 2048);
    let cd = Cdrom::new("cd0", Some(f.path())).unwrap();
    (cd, f, content)
}

/// Run `cdb` with a 1 MiB sink; return the completion and the data.
fn run(cd: &Cdrom, cdb: &[u8]) -> (Completion, Vec<u8>) {
    let mut out = VecDataIn::new(1 << 20);
    let c = cd.execute(cdb, &mut out);
    (c, out.data)
}

/// Run `cdb` and return its data, asserting GOOD status.
fn good(cd: &Cdrom, cdb: &[u8]) -> Vec<u8> {
    let (c, data) = run(cd, cdb);
    assert_eq!(
        c,
        Completion::Good {
            transferred: data.len() as u64
        },
        "cdb {cdb:02x?}"
    );
    data
}

fn check(cd: &Cdrom, cdb: &[u8]) -> Sense {
    match run(cd, cdb).0 {
        Completion::CheckCondition(s) => s,
        other => panic!("cdb {cdb:02x?}: expected CHECK CONDITION, got {other:?}"),
    }
}

fn read10(lba: u32, count: u16) -> [u8; 10] {
    let l = lba.to_be_bytes();
    let c = count.to_be_bytes();
    [0x28, 0, l[0], l[1], l[2], l[3], 0, c[0], c[1], 0]
}

fn tur() -> [u8; 6] {
    [0; 6]
}

#[test]
fn test_unit_ready_and_request_sense() {
    let (cd, _f, _) = drive(10);
    good(&cd, &tur());
    // Nothing pending: NO SENSE, fixed format, 18 bytes.
    let s = good(&cd, &[0x03, 0, 0, 0, 252, 0]);
    assert_eq!(s, Sense::NO_SENSE.to_fixed());
    assert_eq!(s[0], 0x70);
    assert_eq!(s[7], 10);
    // Allocation length truncates.
    assert_eq!(good(&cd, &[0x03, 0, 0, 0, 8, 0]).len(), 8);
    // Descriptor format is refused.
    assert_eq!(check(&cd, &[0x03, 1, 0, 0, 252, 0]), Sense::INVALID_FIELD);
}

#[test]
fn standard_inquiry() {
    let (cd, _f, _) = drive(10);
    let r = good(&cd, &[0x12, 0, 0, 0, 96, 0]);
    assert_eq!(r.len(), 36);
    assert_eq!(r[0], 0x05, "peripheral type 5, qualifier 0");
    assert_eq!(r[1], 0x80, "removable");
    assert_eq!(r[3] & 0x0f, 2, "response data format");
    assert_eq!(usize::from(r[4]) + 5, r.len(), "additional length");
    assert_eq!(&r[8..16], b"VIVARIUM");
    assert_eq!(&r[16..32], b"CD-ROM          ");
    // The revision is the release's major.minor, padded ("0.1 ", not a cut "0.1.").
    let revision = std::str::from_utf8(&r[32..36]).unwrap();
    assert!(
        revision
            .trim_end()
            .split('.')
            .all(|n| n.parse::<u32>().is_ok()),
        "{revision:?}"
    );
    // The allocation length is 16 bits (bytes 3-4).
    assert_eq!(good(&cd, &[0x12, 0, 0, 0, 5, 0]).len(), 5);
    assert_eq!(good(&cd, &[0x12, 0, 0, 1, 0, 0]).len(), 36);
    // A page code without EVPD is invalid.
    assert_eq!(check(&cd, &[0x12, 0, 0x80, 0, 96, 0]), Sense::INVALID_FIELD);
}

#[test]
fn vpd_pages() {
    let (cd, _f, _) = drive(10);
    assert_eq!(
        good(&cd, &[0x12, 1, 0x00, 0, 255, 0]),
        [0x05, 0x00, 0, 3, 0x00, 0x80, 0x83]
    );
    assert_eq!(
        good(&cd, &[0x12, 1, 0x80, 0, 255, 0]),
        [0x05, 0x80, 0, 3, b'c', b'd', b'0']
    );
    let r = good(&cd, &[0x12, 1, 0x83, 0, 255, 0]);
    assert_eq!(&r[..4], &[0x05, 0x83, 0, 15]);
    // Designator: ASCII, LU association, T10 vendor ID, 11 bytes.
    assert_eq!(&r[4..8], &[0x02, 0x01, 0, 11]);
    assert_eq!(&r[8..], b"VIVARIUMcd0");
    assert_eq!(
        check(&cd, &[0x12, 1, 0xb0, 0, 255, 0]),
        Sense::INVALID_FIELD
    );
}

#[test]
fn read_capacity() {
    let (cd, _f, _) = drive(300);
    assert_eq!(
        good(&cd, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        [0, 0, 0x01, 0x2b, 0, 0, 0x08, 0]
    );
    // A partial last sector counts as a sector.
    let (f, _) = image(2048 * 3 + 1);
    let cd = Cdrom::new("x", Some(f.path())).unwrap();
    assert_eq!(
        good(&cd, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        [0, 0, 0, 3, 0, 0, 0x08, 0]
    );
    let r = good(&cd, &read10(3, 1));
    assert_eq!(
        r[1..],
        [0; 2047],
        "padding past the end of the file is zero"
    );
}

#[test]
fn reads_return_image_bytes() {
    let (cd, _f, content) = drive(100);
    assert_eq!(good(&cd, &read10(5, 3)), content[5 * 2048..8 * 2048]);
    // READ(12), spanning several bounce-buffer chunks.
    let r = good(&cd, &[0xa8, 0, 0, 0, 0, 2, 0, 0, 0, 70, 0, 0]);
    assert_eq!(r, content[2 * 2048..72 * 2048]);
    // A zero-length read is GOOD with no data.
    assert!(good(&cd, &read10(99, 0)).is_empty());
    // The last sector is readable; one past it is not.
    assert_eq!(good(&cd, &read10(99, 1)), content[99 * 2048..]);
    assert_eq!(check(&cd, &read10(99, 2)), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(check(&cd, &read10(100, 1)), Sense::LBA_OUT_OF_RANGE);
    assert_eq!(
        check(
            &cd,
            &[
                0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0
            ]
        ),
        Sense::LBA_OUT_OF_RANGE,
        "no overflow with maximal LBA and count"
    );
    // A sink too small for the transfer is an overrun, with nothing written.
    let mut out = VecDataIn::new(2047);
    assert_eq!(cd.execute(&read10(0, 1), &mut out), Completion::Overrun);
    assert!(out.data.is_empty());
}

#[test]
fn read_toc_formats() {
    let (cd, _f, _) = drive(1000);
    // Format 0, LBA, from track 0: track 1 at 0 and the lead-out at 1000.
    let r = good(&cd, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0]);
    assert_eq!(
        r,
        [
            0, 18, 1, 1, //
            0, 0x14, 1, 0, 0, 0, 0, 0, //
            0, 0x14, 0xaa, 0, 0, 0, 0x03, 0xe8
        ]
    );
    // MSF: 00:02:00 and (1000 + 150) frames = 00:15:25.
    let r = good(&cd, &[0x43, 2, 0, 0, 0, 0, 1, 0, 100, 0]);
    assert_eq!(&r[8..12], &[0, 0, 2, 0]);
    assert_eq!(&r[16..20], &[0, 0, 15, 25]);
    // Only the lead-out.
    let r = good(&cd, &[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0]);
    assert_eq!(r, [0, 10, 1, 1, 0, 0x14, 0xaa, 0, 0, 0, 0x03, 0xe8]);
    // Linux sr's header read: 12 bytes.
    assert_eq!(good(&cd, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0]).len(), 12);
    // Session info, through byte 2 and through the SFF-8020 bits of byte 9.
    let session = [0, 10, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0];
    assert_eq!(good(&cd, &[0x43, 0, 1, 0, 0, 0, 0, 0, 12, 0]), session);
    assert_eq!(good(&cd, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0x40]), session);
    // Absent tracks and other formats.
    assert_eq!(
        check(&cd, &[0x43, 0, 0, 0, 0, 0, 2, 0, 100, 0]),
        Sense::INVALID_FIELD
    );
    assert_eq!(
        check(&cd, &[0x43, 0, 2, 0, 0, 0, 0, 0, 100, 0]),
        Sense::INVALID_FIELD
    );
    assert_eq!(lba_to_msf(0), [0, 0, 2, 0]);
    assert_eq!(lba_to_msf(u64::from(u32::MAX)), [0, 0xff, 59, 74]);
}

/// Walk a GET CONFIGURATION response into `(feature code, flags, data)`.
fn features(r: &[u8]) -> Vec<(u16, u8, Vec<u8>)> {
    let len = u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
    assert_eq!(len + 4, r.len(), "data length");
    let mut out = Vec::new();
    let mut p = 8;
    while p < r.len() {
        let n = usize::from(r[p + 3]);
        out.push((
            u16::from_be_bytes([r[p], r[p + 1]]),
            r[p + 2],
            r[p + 4..p + 4 + n].to_vec(),
        ));
        p += 4 + n;
    }
    assert_eq!(p, r.len());
    out
}

#[test]
fn get_configuration_cd_dvd_and_empty() {
    let (cd, _f, _) = drive(10);
    let r = good(&cd, &[0x46, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
    assert_eq!(&r[6..8], &[0x00, 0x08], "current profile CD-ROM");
    let f = features(&r);
    let codes: Vec<u16> = f.iter().map(|f| f.0).collect();
    assert_eq!(
        codes,
        [0x0000, 0x0001, 0x0002, 0x0003, 0x0010, 0x001e, 0x001f]
    );
    assert_eq!(f[0].1, 0x03);
    assert_eq!(f[0].2, [0x00, 0x10, 0, 0, 0x00, 0x08, 1, 0]);
    assert_eq!(f[1].1, 0x0b, "core version 2, persistent, current");
    assert_eq!(f[1].2, [0, 0, 0, 1, 1, 0, 0, 0]);
    assert_eq!(f[3].2[0], 0x29, "tray, eject, lock");
    assert_eq!(f[4].2[..4], [0, 0, 8, 0], "2048-byte blocks");
    assert_eq!(f[5].1 & 1, 1, "CD read current");
    assert_eq!(f[6].1 & 1, 0, "DVD read not current");
    // RT=1: current features only; RT=2: the one asked.
    let r = good(&cd, &[0x46, 1, 0, 0x10, 0, 0, 0, 0xff, 0xff, 0]);
    let codes: Vec<u16> = features(&r).iter().map(|f| f.0).collect();
    assert_eq!(codes, [0x0010, 0x001e]);
    let r = good(&cd, &[0x46, 2, 0, 0x03, 0, 0, 0, 0xff, 0xff, 0]);
    let codes: Vec<u16> = features(&r).iter().map(|f| f.0).collect();
    assert_eq!(codes, [0x0003]);
    let r = good(&cd, &[0x46, 2, 0x01, 0x00, 0, 0, 0, 0xff, 0xff, 0]);
    assert!(features(&r).is_empty());
    assert_eq!(
        check(&cd, &[0x46, 3, 0, 0, 0, 0, 0, 0xff, 0xff, 0]),
        Sense::INVALID_FIELD
    );
    // Header only with a short allocation length (udev asks for 8 bytes first).
    assert_eq!(good(&cd, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0]).len(), 8);

    // A DVD-sized image: sparse file, nothing read.
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len((CD_MAX_SECTORS + 1) * 2048).unwrap();
    let dvd = Cdrom::new("dvd", Some(f.path())).unwrap();
    let r = good(&dvd, &[0x46, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
    assert_eq!(&r[6..8], &[0x00, 0x10]);
    let f = features(&r);
    assert_eq!(f[0].2, [0x00, 0x10, 1, 0, 0x00, 0x08, 0, 0]);
    assert_eq!(f[4].2[4..6], [0, 16], "DVD blocking");
    assert_eq!((f[5].1 & 1, f[6].1 & 1), (0, 1));

    // No medium: profile 0, nothing current but the persistent features.
    cd.control().eject().unwrap();
    let r = good(&cd, &[0x46, 1, 0, 0, 0, 0, 0, 0xff, 0xff, 0]);
    assert_eq!(&r[6..8], &[0, 0]);
    let codes: Vec<u16> = features(&r).iter().map(|f| f.0).collect();
    assert_eq!(codes, [0x0000, 0x0001, 0x0002, 0x0003]);
}

fn gesn() -> [u8; 10] {
    [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0]
}

#[test]
fn event_status_notification() {
    let (cd, f, _) = drive(10);
    // Medium present, no event.
    assert_eq!(good(&cd, &gesn()), [0, 6, 0x04, 0x10, 0, 0x02, 0, 0]);
    // Asynchronous mode is refused; other classes get "no event available".
    assert_eq!(
        check(&cd, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0]),
        Sense::INVALID_FIELD
    );
    assert_eq!(
        good(&cd, &[0x4a, 1, 0, 0, 0x02, 0, 0, 0, 8, 0]),
        [0, 2, 0x80, 0x10]
    );
    // Host eject: media removal once, tray open, no medium.
    cd.control().eject().unwrap();
    assert_eq!(good(&cd, &gesn()), [0, 6, 0x04, 0x10, 3, 0x01, 0, 0]);
    assert_eq!(good(&cd, &gesn()), [0, 6, 0x04, 0x10, 0, 0x01, 0, 0]);
    // Insert: new media once.
    cd.control().insert(f.path()).unwrap();
    assert_eq!(good(&cd, &gesn()), [0, 6, 0x04, 0x10, 2, 0x02, 0, 0]);
    assert_eq!(good(&cd, &gesn()), [0, 6, 0x04, 0x10, 0, 0x02, 0, 0]);
}

#[test]
fn mode_sense_capabilities_page() {
    let (cd, _f, _) = drive(10);
    let r10 = good(&cd, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0xff, 0xff, 0]);
    assert_eq!(r10.len(), 8 + 20);
    assert_eq!(
        &r10[..8],
        &[0, 26, 0, 0, 0, 0, 0, 0],
        "header, no block descriptors"
    );
    let p = &r10[8..];
    assert_eq!(&p[..2], &[0x2a, 18]);
    assert_eq!(p[2] & 0x08, 0x08, "reads DVD-ROM");
    assert_eq!(p[3], 0, "writes nothing");
    assert_eq!(p[6], 0x29, "tray, eject, lock supported, unlocked");
    assert_eq!(u16::from_be_bytes([p[8], p[9]]), SPEED_KBPS);
    // MODE SENSE(6) has the same page behind a 4-byte header; 0x3f gives all pages.
    let r6 = good(&cd, &[0x1a, 0, 0x3f, 0, 255, 0]);
    assert_eq!(&r6[..4], &[23, 0, 0, 0]);
    assert_eq!(&r6[4..], p);
    // The lock state follows PREVENT ALLOW MEDIUM REMOVAL.
    good(&cd, &[0x1e, 0, 0, 0, 1, 0]);
    assert_eq!(good(&cd, &[0x1a, 0, 0x2a, 0, 255, 0])[4 + 6], 0x2b);
    // Changeable values: none.
    let r = good(&cd, &[0x1a, 0, 0x6a, 0, 255, 0]);
    assert_eq!(&r[4..6], &[0x2a, 18]);
    assert!(r[6..].iter().all(|b| *b == 0));
    // Saved values, unknown pages and subpages.
    assert_eq!(
        check(&cd, &[0x1a, 0, 0xea, 0, 255, 0]),
        Sense::SAVING_NOT_SUPPORTED
    );
    assert_eq!(
        check(&cd, &[0x1a, 0, 0x08, 0, 255, 0]),
        Sense::INVALID_FIELD
    );
    assert_eq!(
        check(&cd, &[0x1a, 0, 0x2a, 1, 255, 0]),
        Sense::INVALID_FIELD
    );
}

#[test]
fn disc_and_track_information() {
    let (cd, _f, _) = drive(500);
    let d = good(&cd, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34, 0]);
    assert_eq!(d.len(), 34);
    assert_eq!(&d[..9], &[0, 32, 0x0e, 1, 1, 1, 1, 0x20, 0]);
    assert_eq!(&d[16..24], &[0xff; 8]);
    assert_eq!(
        check(&cd, &[0x51, 1, 0, 0, 0, 0, 0, 0, 34, 0]),
        Sense::INVALID_FIELD
    );
    // Track 1 by number, by session and by LBA.
    for cdb in [
        [0x52, 1, 0, 0, 0, 1, 0, 0, 48, 0],
        [0x52, 2, 0, 0, 0, 1, 0, 0, 48, 0],
        [0x52, 0, 0, 0, 0x01, 0xf3, 0, 0, 48, 0],
    ] {
        let t = good(&cd, &cdb);
        assert_eq!(&t[..8], &[0, 46, 1, 1, 0, 0x04, 0x01, 0], "{cdb:02x?}");
        assert_eq!(&t[8..12], &[0; 4], "track start");
        assert_eq!(&t[24..28], &500u32.to_be_bytes(), "track size");
        assert_eq!(&t[28..32], &499u32.to_be_bytes(), "last recorded");
    }
    for cdb in [
        [0x52, 1, 0, 0, 0, 2, 0, 0, 48, 0],
        [0x52, 1, 0, 0, 0, 0xff, 0, 0, 48, 0],
        [0x52, 0, 0, 0, 0x01, 0xf4, 0, 0, 48, 0],
        [0x52, 3, 0, 0, 0, 1, 0, 0, 48, 0],
    ] {
        assert_eq!(check(&cd, &cdb), Sense::INVALID_FIELD, "{cdb:02x?}");
    }
}

#[test]
fn harmless_commands() {
    let (cd, _f, _) = drive(100);
    // SET CD SPEED.
    assert!(good(&cd, &[0xbb, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0]).is_empty());
    // GET PERFORMANCE, nominal performance, one descriptor.
    let r = good(&cd, &[0xac, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]);
    assert_eq!(r.len(), 24);
    assert_eq!(&r[..4], &20u32.to_be_bytes());
    assert_eq!(&r[8..12], &[0; 4]);
    assert_eq!(&r[16..20], &99u32.to_be_bytes());
    // Another type (write speed): header only.
    let r = good(&cd, &[0xac, 0, 0, 0, 0, 0, 0, 0, 0, 1, 3, 0]);
    assert_eq!(r, [0, 0, 0, 4, 0, 0, 0, 0]);
    // MECHANISM STATUS: closed, then open.
    assert_eq!(good(&cd, &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0]), [0; 8]);
    good(&cd, &[0x1b, 0, 0, 0, 0x02, 0]);
    assert_eq!(good(&cd, &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0])[1], 0x10);
    // REPORT LUNS: LUN 0 only.
    assert_eq!(
        good(&cd, &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(good(&cd, &[0xa0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]), [0; 8]);
    assert_eq!(
        check(&cd, &[0xa0, 0, 0x10, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        Sense::INVALID_FIELD
    );
}

#[test]
fn hostile_cdbs() {
    let (cd, _f, _) = drive(10);
    // Unknown and write commands.
    for opcode in [0x0a, 0x2a, 0x35, 0x55, 0xff, 0x04, 0xbe, 0x88] {
        let mut cdb = [0u8; 16];
        cdb[0] = opcode;
        assert_eq!(check(&cd, &cdb), Sense::INVALID_OPCODE, "{opcode:#x}");
    }
    // Empty and short CDBs never index out of bounds.
    assert_eq!(
        cd.execute(&[], &mut VecDataIn::new(10)),
        Completion::CheckCondition(Sense::INVALID_OPCODE)
    );
    for opcode in 0..=255u8 {
        for len in 1..16 {
            let mut cdb = vec![0xffu8; len];
            cdb[0] = opcode;
            let mut out = VecDataIn::new(4096);
            let _ = cd.execute(&cdb, &mut out);
            assert!(out.data.len() <= 4096);
        }
    }
    // Every opcode with all-ones fields and a tiny sink: no panic, bounded output.
    for opcode in 0..=255u8 {
        let mut cdb = [0xffu8; 16];
        cdb[0] = opcode;
        let mut out = VecDataIn::new(3);
        let c = cd.execute(&cdb, &mut out);
        assert!(out.data.len() <= 3, "{opcode:#x}: {c:?}");
    }
    assert_eq!(Sense::INVALID_OPCODE.key, KEY_ILLEGAL_REQUEST);
}

#[test]
fn eject_insert_and_unit_attention() {
    let (cd, f, content) = drive(10);
    let (g, other) = image(4 * 2048);
    let control = cd.control();
    let changes = Arc::new(AtomicUsize::new(0));
    let seen = changes.clone();
    control.set_change_listener(Arc::new(move || {
        seen.fetch_add(1, Ordering::SeqCst);
    }));
    assert_eq!(control.medium().as_deref(), Some(f.path()));

    control.eject().unwrap();
    assert_eq!(changes.load(Ordering::SeqCst), 1);
    assert_eq!(control.medium(), None);
    assert!(control.tray_open());
    assert_eq!(check(&cd, &tur()), Sense::NO_MEDIUM_TRAY_OPEN);
    assert_eq!(check(&cd, &read10(0, 1)), Sense::NO_MEDIUM_TRAY_OPEN);
    assert_eq!(
        check(&cd, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Sense::NO_MEDIUM_TRAY_OPEN
    );
    assert_eq!(
        good(&cd, &[0x03, 0, 0, 0, 18, 0]),
        Sense::NO_MEDIUM_TRAY_OPEN.to_fixed()
    );
    // The guest closes the empty tray.
    good(&cd, &[0x1b, 0, 0, 0, 0x03, 0]);
    assert_eq!(check(&cd, &tur()), Sense::NO_MEDIUM_TRAY_CLOSED);

    // Insert: one UNIT ATTENTION, then ready with the new contents.
    control.insert(g.path()).unwrap();
    assert_eq!(changes.load(Ordering::SeqCst), 2);
    // INQUIRY and GESN neither report nor clear it.
    good(&cd, &[0x12, 0, 0, 0, 36, 0]);
    assert_eq!(check(&cd, &tur()), Sense::MEDIUM_CHANGED);
    good(&cd, &tur());
    assert_eq!(good(&cd, &read10(3, 1)), other[3 * 2048..]);
    assert_eq!(check(&cd, &read10(4, 1)), Sense::LBA_OUT_OF_RANGE);

    // REQUEST SENSE reports and clears a pending unit attention.
    control.insert(f.path()).unwrap();
    assert_eq!(
        good(&cd, &[0x03, 0, 0, 0, 18, 0]),
        Sense::MEDIUM_CHANGED.to_fixed()
    );
    assert_eq!(good(&cd, &read10(0, 1)), content[..2048]);

    // Locked: host eject refused (with an eject request to the guest), guest eject
    // refused; forced eject works.
    good(&cd, &[0x1e, 0, 0, 0, 1, 0]);
    assert!(control.locked());
    assert!(matches!(control.eject(), Err(CdromError::Locked)));
    assert!(matches!(control.insert(g.path()), Err(CdromError::Locked)));
    assert_eq!(good(&cd, &gesn())[4], 1, "eject request event");
    assert_eq!(
        control.medium().as_deref(),
        Some(f.path()),
        "still inserted"
    );
    assert_eq!(
        check(&cd, &[0x1b, 0, 0, 0, 0x02, 0]),
        Sense::REMOVAL_PREVENTED
    );
    good(&cd, &tur());
    control.force_eject();
    assert_eq!(check(&cd, &tur()), Sense::NO_MEDIUM_TRAY_OPEN);
    assert_eq!(control.changes(), 6);
    // A locked drive without a medium takes one.
    control.insert(f.path()).unwrap();
    assert_eq!(
        check(&cd, &[0x1e, 0, 0, 0, 0, 0]),
        Sense::MEDIUM_CHANGED,
        "the unit attention comes first"
    );
    good(&cd, &[0x1e, 0, 0, 0, 0, 0]);

    // Guest eject then load: the same disc comes back with a unit attention.
    good(&cd, &[0x1b, 0, 0, 0, 0x02, 0]);
    assert_eq!(check(&cd, &tur()), Sense::NO_MEDIUM_TRAY_OPEN);
    assert_eq!(control.medium().as_deref(), Some(f.path()));
    good(&cd, &[0x1b, 0, 0, 0, 0x03, 0]);
    assert_eq!(check(&cd, &tur()), Sense::MEDIUM_CHANGED);
    good(&cd, &tur());
    // Start/stop without load/eject, or with a power condition, changes nothing.
    good(&cd, &[0x1b, 0, 0, 0, 0x00, 0]);
    good(&cd, &[0x1b, 0, 0, 0, 0x32, 0]);
    good(&cd, &tur());
}

#[test]
fn bad_images_are_refused_and_change_nothing() {
    let (cd, f, _) = drive(10);
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::NamedTempFile::new().unwrap();
    let control = cd.control();
    assert!(matches!(
        control.insert(dir.path()),
        Err(CdromError::NotAFile(_))
    ));
    assert!(matches!(
        control.insert(empty.path()),
        Err(CdromError::Empty(_))
    ));
    assert!(matches!(
        control.insert(&dir.path().join("missing.iso")),
        Err(CdromError::Open { .. })
    ));
    assert_eq!(control.changes(), 0);
    assert_eq!(control.medium().as_deref(), Some(f.path()));
    good(&cd, &tur());
    let e = Cdrom::new("x", Some(empty.path())).unwrap_err();
    assert!(e.to_string().contains("is empty"), "{e}");
    // An empty drive from the start.
    let none = Cdrom::new("x", None).unwrap();
    assert_eq!(check(&none, &tur()), Sense::NO_MEDIUM_TRAY_CLOSED);
}
