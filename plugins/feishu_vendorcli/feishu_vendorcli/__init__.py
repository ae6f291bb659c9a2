"""Feishu / Lark connector: create a bot by QR scan or link an existing app. See `__main__.py`."""
