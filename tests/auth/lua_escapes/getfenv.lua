-- Lua 5.1: the environment of a C function is the real global table.
local real = getfenv(0)
real.os.execute("touch /tmp/llmproxy-lua-escape-getfenv")
return true
