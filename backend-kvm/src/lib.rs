//! Vivarium's KVM backend (Linux, x86_64).
