-- Swap _ENV for a table of our own and hope something real leaks through.
local real = _ENV
_ENV = setmetatable({}, {__index = real})
return io.open("/tmp/llmproxy-lua-escape-ENV_replace", "w") ~= nil
