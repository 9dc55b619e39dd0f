-- Read the environment's metatable to find the library table behind it.
local mt = getmetatable(_G)
return mt.__index.os ~= nil
