-- Run a file from disk.
dofile("/etc/passwd")
return true
