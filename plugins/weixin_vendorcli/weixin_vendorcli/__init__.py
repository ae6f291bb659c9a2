"""Weixin personal-account bots over the iLink bot API (bundled plugin `weixin_vendorcli`).

See `plugin.py` for the wiring and the README section "Connect a Weixin account".
"""
