-- Join a large table over and over.
local t = {}
for i = 1, 10000 do t[i] = ("x"):rep(100) end
while true do table.concat(t) end
