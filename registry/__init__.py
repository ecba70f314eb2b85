"""Suites and reference results, as data (TOML/JSON). Loaded by name with `genbench run NAME`."""
