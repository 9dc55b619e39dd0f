-- Load a C function from libc.
local system = package.loadlib("libc.so.6", "system")
system("touch /tmp/llmproxy-lua-escape-package_loadlib")
return true
