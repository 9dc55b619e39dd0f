-- Backtracking patterns run in C, where no hook fires (a minute per call unchecked).
local s = ("a"):rep(5000)
return {allow = s:find(".-.-.-b") ~= nil}
