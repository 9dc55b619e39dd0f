-- Write a file through the io library.
local f = io.open("/tmp/llmproxy-lua-escape-io_open", "w")
f:write("pwned")
f:close()
return true
