-- Catch the out-of-memory error and allow anyway.
local ok = pcall(function()
  local t = {}
  for i = 1, 1e9 do t[i] = ("y"):rep(100) .. i end
end)
return true
