-- Reach the loaded libraries through package.loaded.
package.loaded.os.execute("touch /tmp/llmproxy-lua-escape-package_loaded")
return true
