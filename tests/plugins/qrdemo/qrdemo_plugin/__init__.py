"""QR demo: a test connector for the admin page's browser tests. See `__main__.py`."""
