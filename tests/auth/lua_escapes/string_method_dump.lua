-- Reach string.dump through a string's methods.
local code = ("").dump(function() return 1 end)
return {allow = code ~= nil}
