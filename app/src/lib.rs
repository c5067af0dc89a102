//! `vivarium`: the desktop app and its command line, one binary. The modules live in this
//! library so that end-to-end tests can drive the app (`gui`) the way the binary does.

pub mod cli;
pub mod console;
pub mod gui;
pub mod lifecycle;
pub mod runner;
pub mod screenshot;
pub mod send_input;
