"""Device profiles (one TOML per target), shipped as package data of ``hwprune.devices``."""
