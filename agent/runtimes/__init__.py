"""Job runtimes: how an attempt is started, watched, stopped and re-adopted.

:mod:`.base` is the interface, :mod:`.process` and :mod:`.docker` the two runtimes,
:mod:`.registry` which one serves which environment kind on this node.
"""
