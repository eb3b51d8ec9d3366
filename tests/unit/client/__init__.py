"""The typed client against the real master app, in-process (the transport hook)."""
