-- Inspect the stack (and from there upvalues of the sandbox).
local info = debug.getinfo(1)
return info ~= nil
