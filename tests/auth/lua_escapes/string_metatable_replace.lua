-- Replace the string metatable's __index for the next call.
local mt = getmetatable("")
mt.__index = {upper = function() return "pwned" end}
return true
