-- One allocation larger than the runtime may have.
local s = string.rep("x", 2 ^ 30)
return #s > 0
