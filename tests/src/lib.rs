//! Helpers shared by the end-to-end tests: locating the `vivarium` binary, temporary libraries.
