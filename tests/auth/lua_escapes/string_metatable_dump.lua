-- Reach string.dump through the string metatable.
local code = getmetatable("").__index.dump(function() return 1 end)
return {allow = code ~= nil}
