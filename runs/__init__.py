"""The run: its record, statuses and checkpoints, and every transition of it as one Lua script.

Shared by the API (submit, read, cancel, retry, answer) and the workers (begin, progress, finish).
"""
