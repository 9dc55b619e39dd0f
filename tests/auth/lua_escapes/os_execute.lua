-- Run a shell command through the os library.
os.execute("touch /tmp/llmproxy-lua-escape-os_execute")
return true
