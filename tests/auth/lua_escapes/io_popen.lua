-- Start a process through io.popen.
io.popen("touch /tmp/llmproxy-lua-escape-io_popen"):close()
return true
