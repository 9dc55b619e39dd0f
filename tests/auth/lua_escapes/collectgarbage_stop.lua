-- Stop the collector so memory only grows.
collectgarbage("stop")
return true
