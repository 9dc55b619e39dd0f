-- gsub calling back into gsub: each level eats the C stack (a segfault in LuaJIT).
local function f() ("x"):gsub(".", f) end
while true do pcall(f) end
