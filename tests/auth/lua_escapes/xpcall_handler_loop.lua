-- Loop inside the error handler, where the stack is deepest.
xpcall(function()
  local function f() f() end
  f()
end, function() while true do end end)
return true
