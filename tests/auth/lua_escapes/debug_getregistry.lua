-- The registry holds the real globals.
local registry = debug.getregistry()
registry[2].os.execute("touch /tmp/llmproxy-lua-escape-debug_getregistry")
return true
