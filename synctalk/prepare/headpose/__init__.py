"""Head-Sync Stabilizer internals: conventions, rigid pose + focal search, flow tracks, bundle adjustment."""
