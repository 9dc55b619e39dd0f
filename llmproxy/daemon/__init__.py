"""The process: runtime snapshots, the listener, signals and lifecycle."""
