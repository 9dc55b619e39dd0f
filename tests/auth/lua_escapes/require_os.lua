-- Load the os library by name.
local os = require "os"
os.execute("touch /tmp/llmproxy-lua-escape-require_os")
return true
