-- Dump a function to bytecode (the first step to loading crafted bytecode).
local code = string.dump(function() return 1 end)
return {allow = code ~= nil}
