"""Authentication: API keys, the provider pipeline, sandboxed Lua decisions."""
