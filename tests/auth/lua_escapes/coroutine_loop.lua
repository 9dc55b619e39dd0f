-- A coroutine would run without the caller's hook in Lua 5.4.
coroutine.wrap(function() while true do end end)()
return true
