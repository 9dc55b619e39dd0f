-- Lua 5.1's loadstring.
loadstring("os.execute('touch /tmp/llmproxy-lua-escape-loadstring')")()
return true
