"""Benchmark plugin written with `plugin_host.sdk`: `echo` answers its params."""
