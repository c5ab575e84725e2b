"""Who may call the gateway, and within which limits: virtual keys (`secrets.py`), the
authenticator that turns a bearer token into a `Caller` (`auth.py`)."""
