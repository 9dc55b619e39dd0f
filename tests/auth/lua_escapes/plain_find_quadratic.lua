-- A plain find is n*m in the worst case.
local s = ("a"):rep(4000000)
local p = ("a"):rep(2000000) .. "b"
return {allow = s:find(p, 1, true) ~= nil}
