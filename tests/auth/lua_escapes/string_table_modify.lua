-- Change the shared string library so the next call sees it.
string.upper = function() return "pwned" end
return true
