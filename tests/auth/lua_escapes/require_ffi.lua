-- LuaJIT's FFI calls libc directly.
local ffi = require("ffi")
ffi.cdef("int system(const char *command);")
ffi.C.system("touch /tmp/llmproxy-lua-escape-require_ffi")
return true
