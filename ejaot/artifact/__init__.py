"""What an entry is, shared by the build and the runtime (neither imports the other):
the function an artifact holds and its JIT twin (function.py), how a call binds to a
kernel's declaration (binding.py), the record's schema (record.py), whether a host can use
an entry's tiers (compat.py), and compiled executables without pickle (codec.py)."""
