-- Give the environment a fallback to somewhere richer.
setmetatable(_G, {__index = function(_, name) return name end})
return os.execute("touch /tmp/llmproxy-lua-escape-setmetatable_env") ~= nil
