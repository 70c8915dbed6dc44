"""Device profiles shipped as TOML data files (loaded by edge_run.profiles.devices)."""
