-- The same through gmatch and a long subject.
local s = ("a"):rep(20000)
for _ in s:gmatch("a-a-a-b") do end
return true
