"""The central daemon: API servicers, SQLite store, queue and placement, liveness."""
