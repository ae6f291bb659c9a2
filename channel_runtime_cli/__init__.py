"""The `channel-runtime` command and the composition root of the service (`compose.build_app`).

The top of the layering: it may import every package; none imports it.
"""
