//! The `etc/table-loader` script: how the firmware places ACPI tables handed over as fw_cfg
//! files and links them together (QEMU's "BIOS linker/loader", which SeaBIOS's
//! `romfile_loader` and OVMF's `AcpiPlatformDxe` run).
//!
//! The script is an array of 128-byte commands:
//!
//! ```text
//! ALLOCATE     (1)  file[56], align u32, zone u8 (1 anywhere high, 2 the F segment)
//! ADD_POINTER  (2)  dest file[56], src file[56], offset u32, size u8
//!                   (the little-endian number of `size` bytes at `offset` in dest gets
//!                    the address where src was placed added to it)
//! ADD_CHECKSUM (3)  file[56], checksum offset u32, start u32, length u32
//!                   (the byte at the offset is changed so that the range sums to 0)
//! ```
//!
//! A table blob is therefore built as if it started at address 0: every pointer holds the
//! offset of its target inside the file it points into.

use super::{FILE_NAME_LEN, FwCfgError};

/// Size of one command.
pub const COMMAND_LEN: usize = 128;

const ALLOCATE: u32 = 1;
const ADD_POINTER: u32 = 2;
const ADD_CHECKSUM: u32 = 3;

/// Where the firmware may place a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Zone {
    /// Anywhere in RAM the firmware reserves (ACPI tables).
    High = 1,
    /// In the F segment below 1 MiB (the RSDP, which legacy OSes scan for there).
    FSegment = 2,
}

/// A table-loader script being written.
#[derive(Clone, Debug, Default)]
pub struct TableLoader {
    commands: Vec<u8>,
}

impl TableLoader {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    fn name_field(name: &str) -> Result<[u8; FILE_NAME_LEN], FwCfgError> {
        if name.is_empty() || name.len() >= FILE_NAME_LEN || name.contains('\0') {
            return Err(FwCfgError::BadName(name.to_string()));
        }
        let mut field = [0u8; FILE_NAME_LEN];
        field[..name.len()].copy_from_slice(name.as_bytes());
        Ok(field)
    }

    fn push(&mut self, command: u32, body: &[u8]) {
        let mut entry = [0u8; COMMAND_LEN];
        entry[..4].copy_from_slice(&command.to_le_bytes());
        entry[4..4 + body.len()].copy_from_slice(body);
        self.commands.extend_from_slice(&entry);
    }

    /// The firmware allocates memory for `file` (aligned to `align`, a power of two) in
    /// `zone` and copies the file there.
    pub fn allocate(&mut self, file: &str, align: u32, zone: Zone) -> Result<(), FwCfgError> {
        let mut body = Vec::with_capacity(FILE_NAME_LEN + 5);
        body.extend_from_slice(&Self::name_field(file)?);
        body.extend_from_slice(&align.to_le_bytes());
        body.push(zone as u8);
        self.push(ALLOCATE, &body);
        Ok(())
    }

    /// The `size`-byte pointer at `offset` in `dest` (1, 2, 4 or 8 bytes) gets the address of
    /// `src` added.
    pub fn add_pointer(
        &mut self,
        dest: &str,
        src: &str,
        offset: u32,
        size: u8,
    ) -> Result<(), FwCfgError> {
        let mut body = Vec::with_capacity(2 * FILE_NAME_LEN + 5);
        body.extend_from_slice(&Self::name_field(dest)?);
        body.extend_from_slice(&Self::name_field(src)?);
        body.extend_from_slice(&offset.to_le_bytes());
        body.push(size);
        self.push(ADD_POINTER, &body);
        Ok(())
    }

    /// The byte at `checksum_offset` of `file` is adjusted so that `start..start + length`
    /// sums to zero (after the pointers before this command are patched).
    pub fn add_checksum(
        &mut self,
        file: &str,
        checksum_offset: u32,
        start: u32,
        length: u32,
    ) -> Result<(), FwCfgError> {
        let mut body = Vec::with_capacity(FILE_NAME_LEN + 12);
        body.extend_from_slice(&Self::name_field(file)?);
        body.extend_from_slice(&checksum_offset.to_le_bytes());
        body.extend_from_slice(&start.to_le_bytes());
        body.extend_from_slice(&length.to_le_bytes());
        self.push(ADD_CHECKSUM, &body);
        Ok(())
    }

    /// The script's bytes (the `etc/table-loader` file).
    pub fn into_bytes(self) -> Vec<u8> {
        self.commands
    }
}

/// Runs a script the way a firmware does, over files given by name, placing each allocated
/// file at the address `place` gives. Returns the placed files with their addresses. For
/// tests of the tables a machine hands over: what the guest will see.
pub fn run_script(
    script: &[u8],
    files: &dyn Fn(&str) -> Option<Vec<u8>>,
    place: &mut dyn FnMut(&str, u32, Zone, usize) -> u64,
) -> Result<Vec<(String, u64, Vec<u8>)>, String> {
    if !script.len().is_multiple_of(COMMAND_LEN) {
        return Err("the script is not a whole number of commands".into());
    }
    let name = |b: &[u8]| -> Result<String, String> {
        let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
        String::from_utf8(b[..end].to_vec()).map_err(|_| "a file name is not UTF-8".to_string())
    };
    let mut placed: Vec<(String, u64, Vec<u8>)> = Vec::new();
    for entry in script.chunks(COMMAND_LEN) {
        let command = u32::from_le_bytes(entry[..4].try_into().expect("4 bytes"));
        let body = &entry[4..];
        match command {
            ALLOCATE => {
                let file = name(&body[..FILE_NAME_LEN])?;
                let align = u32::from_le_bytes(body[56..60].try_into().expect("4 bytes"));
                let zone = match body[60] {
                    1 => Zone::High,
                    2 => Zone::FSegment,
                    other => return Err(format!("unknown zone {other}")),
                };
                let data = files(&file).ok_or(format!("no file `{file}`"))?;
                let address = place(&file, align, zone, data.len());
                if align == 0 || !address.is_multiple_of(u64::from(align)) {
                    return Err(format!("`{file}` placed at a misaligned address"));
                }
                placed.push((file, address, data));
            }
            ADD_POINTER => {
                let dest = name(&body[..FILE_NAME_LEN])?;
                let src = name(&body[FILE_NAME_LEN..2 * FILE_NAME_LEN])?;
                let offset = u32::from_le_bytes(body[112..116].try_into().expect("4")) as usize;
                let size = usize::from(body[116]);
                let src_address = placed
                    .iter()
                    .find(|(n, _, _)| *n == src)
                    .map(|(_, a, _)| *a)
                    .ok_or(format!("pointer into `{src}`, which is not allocated"))?;
                let (_, _, data) = placed
                    .iter_mut()
                    .find(|(n, _, _)| *n == dest)
                    .ok_or(format!("pointer in `{dest}`, which is not allocated"))?;
                if ![1, 2, 4, 8].contains(&size) || offset + size > data.len() {
                    return Err(format!("bad pointer at {offset} (size {size}) in `{dest}`"));
                }
                let mut value = [0u8; 8];
                value[..size].copy_from_slice(&data[offset..offset + size]);
                let patched = u64::from_le_bytes(value).wrapping_add(src_address);
                data[offset..offset + size].copy_from_slice(&patched.to_le_bytes()[..size]);
            }
            ADD_CHECKSUM => {
                let file = name(&body[..FILE_NAME_LEN])?;
                let at = u32::from_le_bytes(body[56..60].try_into().expect("4")) as usize;
                let start = u32::from_le_bytes(body[60..64].try_into().expect("4")) as usize;
                let len = u32::from_le_bytes(body[64..68].try_into().expect("4")) as usize;
                let (_, _, data) = placed
                    .iter_mut()
                    .find(|(n, _, _)| *n == file)
                    .ok_or(format!("checksum in `{file}`, which is not allocated"))?;
                if at >= data.len() || start + len > data.len() {
                    return Err(format!("checksum range outside `{file}`"));
                }
                let sum = data[start..start + len]
                    .iter()
                    .fold(0u8, |a, b| a.wrapping_add(*b));
                data[at] = data[at].wrapping_sub(sum);
            }
            0 => {}
            other => return Err(format!("unknown command {other}")),
        }
    }
    Ok(placed)
}
