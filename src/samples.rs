//! The documented sample callbacks, embedded from `samples/{surface}/{command}.json` (by
//! `build.rs`: the files are the list): the bodies `hookbus simulate` posts, the AsyncAPI
//! contract's examples and the events a JetStream stream is made to cover.

/// One surface's samples: `(command, body)` for each file of its directory, by command.
pub type Samples = &'static [(&'static str, &'static [u8])];

include!(concat!(env!("OUT_DIR"), "/samples.rs"));

/// Every sample, `(command, body)`, surface by surface.
pub fn all() -> impl Iterator<Item = (&'static str, &'static [u8])> {
    SURFACES.iter().flat_map(|(_, samples)| samples.iter().copied())
}

/// The sample body of `command` (or of a TRTC event type), if one is documented.
pub fn sample(command: &str) -> Option<&'static [u8]> {
    all().find(|(name, _)| *name == command).map(|(_, body)| body)
}

#[cfg(test)]
mod tests {
    /// Each surface's samples are the files of its directory, and nothing else.
    #[test]
    fn the_samples_are_the_directory() {
        let root = format!("{}/samples", env!("CARGO_MANIFEST_DIR"));
        let mut dirs: Vec<String> = std::fs::read_dir(&root)
            .expect("the samples directory")
            .map(|entry| entry.expect("an entry").file_name().to_string_lossy().into_owned())
            .collect();
        dirs.sort();
        let surfaces: Vec<&str> = super::SURFACES.iter().map(|(surface, _)| *surface).collect();
        assert_eq!(dirs, surfaces);
        for (dir, samples) in super::SURFACES {
            let mut files: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
                .expect("a surface directory")
                .map(|entry| {
                    entry.expect("an entry").file_name().to_string_lossy().trim_end_matches(".json").to_owned()
                })
                .collect();
            files.sort();
            let listed: Vec<&str> = samples.iter().map(|(command, _)| *command).collect();
            assert_eq!(files, listed);
            for (command, body) in *samples {
                assert_eq!(super::sample(command), Some(*body), "{command}");
            }
        }
    }
}
