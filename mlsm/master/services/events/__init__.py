"""The lab's event stream and what it feeds.

- :mod:`.record`: events are added in the transaction of the change they report, in
  commit order (the one way to write an event).
- :mod:`.stream`: reading and following them, each reader seeing what it may.
- :mod:`.watch`: node liveness and full disks, which change in memory, become events.
- :mod:`.notify`: subscriptions (webhooks, email) and the background delivery workers,
  with :mod:`.webhook` (signed, guarded HTTP) and :mod:`.mail` (SMTP) as the channels.
- :mod:`.idle`: the idle-GPU policy, which warns, waits, then cancels or requeues.

This ``__init__`` imports nothing, so the job table can import :mod:`.record` without
pulling in the services that themselves use the job table.
"""
