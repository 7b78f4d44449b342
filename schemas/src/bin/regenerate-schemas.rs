//! Rewrites `schemas/json/` from the Rust types: run after changing a wire type.

use std::collections::HashSet;
use std::io;

fn main() -> io::Result<()> {
    let dir = schemas::json_dir();
    std::fs::create_dir_all(&dir)?;
    let files = schemas::generate();
    let names: HashSet<&str> = files.iter().map(|file| file.name).collect();
    // Remove schemas of types that no longer exist, so the folder never advertises them.
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if name.ends_with(".schema.json") && !names.contains(name) {
            std::fs::remove_file(&path)?;
        }
    }
    for file in files {
        std::fs::write(dir.join(file.name), file.content)?;
    }
    Ok(())
}
