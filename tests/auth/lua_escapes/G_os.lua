-- Look for os through _G.
_G.os.execute("touch /tmp/llmproxy-lua-escape-G_os")
return true
