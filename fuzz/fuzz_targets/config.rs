//! The config loader: any TOML text loads or is refused with an error, never a panic
//! (environment variables are not read here: `from_toml_str(_, false)`).
#![no_main]

use graph_cdc::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The loader takes text; a config file that is not UTF-8 is refused before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `validate` (inside) also reads the credentials the text names, e.g. client_secret_file.
    if let Ok(s) = Settings::from_toml_str(text, false) {
        let _ = s.partitions();
        let _ = s.redacted_json();
        let _ = s.graph.graph_base_url();
        let _ = s.graph.token_url();
        let _ = s.transactional_id();
    }
});
