-- Loop inside table.sort's comparator, catching its own errors.
local t = {}
for i = 1, 300 do t[i] = i end
local function less(a, b)
  while true do pcall(table.sort, t, less) end
end
table.sort(t, less)
return true
