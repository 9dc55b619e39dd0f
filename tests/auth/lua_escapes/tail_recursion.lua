-- Recurse forever with tail calls (no stack growth).
local function f(n) return f(n + 1) end
return f(1)
