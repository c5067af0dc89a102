//! Arch-neutral device models for Vivarium. They see guest memory, a bus and an
//! interrupt line; they never name KVM or Hypervisor.framework.
