-- Compile code at run time, where the environment may be the real one.
load("os.execute('touch /tmp/llmproxy-lua-escape-load_string')")()
return true
