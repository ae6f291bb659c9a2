"""Echo: the example connector of the SDK. See `__main__.py`."""
