//! `weir serve`'s configuration parser on any UTF-8 text: an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_server::serve::ServeConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(config) = ServeConfig::parse(text) {
            let _ = config.listen_addr();
        }
    }
});
