-- A finalizer on a table (Lua 5.4).
setmetatable({}, {__gc = function() while true do end end})
return true
