//! Display adapters: the bochs display (a framebuffer BAR and mode registers), optionally with
//! a legacy VGA in front (the standard VGA of a PC), and the EDID of its virtual monitor. The
//! framebuffer memory belongs to the backend (it maps a shared file into the guest); the models
//! here only say what the guest shows, and draw the VGA's text mode.

pub mod bochs;
pub mod edid;
pub mod vga;
