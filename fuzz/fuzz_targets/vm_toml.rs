//! Fuzz the parsing of a bundle's `vm.toml`: the input, when it is UTF-8 (the library refuses
//! other bytes before parsing), goes through `VmConfig::from_toml`, the function the library
//! loads every bundle's configuration with.
//!
//! Oracles besides "no panic": a configuration that parses is valid, and it survives a round
//! trip (written with `to_toml`, parsed again, the same configuration).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vivarium_core::VmConfig;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let Ok(config) = VmConfig::from_toml(text) else {
        return;
    };
    config.validate().expect("a parsed configuration is valid");
    let _ = config.boot.describe();
    let _ = config.display.vram_size();
    let written = config.to_toml();
    let again = VmConfig::from_toml(&written)
        .unwrap_or_else(|e| panic!("the written configuration does not parse: {e}\n{written}"));
    assert_eq!(again, config, "the round trip changed the configuration");
});
