//! Helpers shared by the end-to-end tests: the `vivarium` binary on temporary libraries, and
//! the guest fixtures and nested test rig for tests that boot real guests.

pub mod guest_disk;
pub mod vivarium;

pub mod bios_disk;
pub mod boot_sector;
pub mod cross;
pub mod elf;
pub mod fixtures;
pub mod fixtures_arm64;
pub mod gate;
pub mod grub_rescue;
pub mod handmade;
pub mod installer_cd_modules;
pub mod installer_iso;
pub mod memtest;
pub mod rig;
pub mod screen;
pub mod vga_text;
pub mod vm_process;
pub mod wait;
