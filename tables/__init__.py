"""Faust tables (changelog-backed, RocksDB via rocksdict) holding per-study state."""
