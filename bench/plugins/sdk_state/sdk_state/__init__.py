"""Benchmark plugin written with `plugin_host.sdk`: times host-kept state writes."""
