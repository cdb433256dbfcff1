//! The `cortex` binary: parses the command line and hands over to `cortexd`.

fn main() {}
