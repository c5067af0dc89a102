//! Display adapters: the bochs display (a framebuffer BAR and mode registers) and the EDID of
//! its virtual monitor. The framebuffer memory belongs to the backend (it maps a shared file
//! into the guest); the models here only say what the guest shows.

pub mod bochs;
pub mod edid;
