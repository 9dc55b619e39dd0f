-- Look for os through _ENV.
_ENV.os.execute("touch /tmp/llmproxy-lua-escape-ENV_os")
return true
