"""Plugin host: plugin packages, process supervision and JSON-RPC over stdio.

Kept import-light on purpose: plugins import `plugin_host.sdk`, and every
millisecond spent here is paid on each plugin's cold start.
"""
