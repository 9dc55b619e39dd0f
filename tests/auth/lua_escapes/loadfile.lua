-- Compile a file from disk.
local f = loadfile("/etc/passwd")
return f ~= nil
