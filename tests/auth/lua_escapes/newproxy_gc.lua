-- A finalizer runs later, outside any budget.
local p = newproxy(true)
getmetatable(p).__gc = function() while true do end end
return true
