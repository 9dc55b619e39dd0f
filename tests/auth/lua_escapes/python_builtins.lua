-- lupa's python.builtins.
python.builtins.open("/tmp/llmproxy-lua-escape-python_builtins", "w").close()
return true
