"""Route handlers by domain. Every handler declares ``opt={"role": ...}`` (who may call it)
and, when it mutates, ``opt={"audit": "<action>"}`` (the audit row's action)."""
